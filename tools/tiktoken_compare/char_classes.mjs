// Finds which code points tiktoken's regex engine counts as \p{L} and \p{N}, by probing every
// code point through the encoders (tiktoken's Unicode tables may be newer than PCRE2's):
//   N: cl100k's \p{N}{1,3} groups "1" c "2" and leaves the token "34", instead of ending on "234";
//   L: gpt2's pattern splits c "'m" into a letter run and the contraction token "'m" (1101),
//      where a symbol would join c and "'" (digits and White_Space also give "'m"; they are
//      excluded first).
// Writes "L lo-hi" / "N lo-hi" hex ranges, the golden tests/data/tiktoken_char_classes.txt.
//
//   node char_classes.mjs --out ../../tests/data/tiktoken_char_classes.txt
import { writeFileSync } from "node:fs";
import { get_encoding } from "tiktoken";

const out = process.argv[process.argv.indexOf("--out") + 1];
if (!out || !process.argv.includes("--out")) throw new Error("--out is required");
const gpt2 = get_encoding("gpt2");
const cl100k = get_encoding("cl100k_base");
const [t34] = cl100k.encode_ordinary("34");
const apostropheM = 1101;  // gpt2's "'m"
// Unicode White_Space, the definition of \s in Rust's regex crate.
const whiteSpace = new Set([0x9, 0xa, 0xb, 0xc, 0xd, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001,
  0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f,
  0x205f, 0x3000]);

const ranges = { L: [], N: [] };
function add(cls, c) {
  const r = ranges[cls];
  if (r.length > 0 && r[r.length - 1][1] === c - 1) r[r.length - 1][1] = c;
  else r.push([c, c]);
}
for (let c = 0; c < 0x110000; c++) {
  if (c >= 0xd800 && c < 0xe000) continue;
  const s = String.fromCodePoint(c);
  const n = cl100k.encode_ordinary("1" + s + "234");
  if (n[n.length - 1] === t34) {
    add("N", c);
  } else if (!whiteSpace.has(c) && gpt2.encode_ordinary(s + "'m").includes(apostropheM)) {
    add("L", c);
  }
}
const hex = (x) => x.toString(16);
const lines = ["# tiktoken@1.0.22 \\p{L} and \\p{N} as code point ranges (tools/tiktoken_compare/char_classes.mjs)"];
for (const cls of ["L", "N"]) for (const [a, b] of ranges[cls]) lines.push(`${cls} ${hex(a)}-${hex(b)}`);
writeFileSync(out, lines.join("\n") + "\n");
console.log(`L: ${ranges.L.length} ranges, N: ${ranges.N.length} ranges -> ${out}`);
