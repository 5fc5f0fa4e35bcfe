// Compares two id files of the same corpus (little-endian uint32, each document followed by eos,
// as written by encode.mjs and by `moda tokenize --format npy --dtype uint32 --val-fraction 0`)
// document by document; prints the count of documents that differ and the first few
// differences with their text. Exits 1 when any document differs.
//
//   node compare.mjs --input corpus.jsonl --expected ref.u32 --actual ours.u32 --eos ID
import { readFileSync } from "node:fs";

const args = {};
for (let i = 2; i + 1 < process.argv.length; i += 2) args[process.argv[i].slice(2)] = process.argv[i + 1];
for (const k of ["input", "expected", "actual", "eos"]) {
  if (!(k in args)) throw new Error(`--${k} is required`);
}
const eos = Number(args.eos);
const texts = readFileSync(args.input, "utf8")
  .split("\n")
  .filter((line) => line.length > 0)
  .map((line) => JSON.parse(line).text);

function documents(path) {
  const b = readFileSync(path);
  const ids = new Uint32Array(b.buffer, b.byteOffset, b.length / 4);
  const out = [];
  let start = 0;
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] === eos) {
      out.push(ids.subarray(start, i));
      start = i + 1;
    }
  }
  if (start !== ids.length) out.push(ids.subarray(start));
  return out;
}

const expected = documents(args.expected);
const actual = documents(args.actual);
let bytes = 0;
let tokens = 0;
let differing = 0;
for (let d = 0; d < texts.length; d++) {
  bytes += Buffer.byteLength(texts[d], "utf8");
  const e = expected[d] ?? new Uint32Array(0);
  const a = actual[d] ?? new Uint32Array(0);
  tokens += e.length;
  let at = 0;
  while (at < e.length && at < a.length && e[at] === a[at]) at++;
  if (at === e.length && at === a.length) continue;
  if (++differing <= 5) {
    console.log(`document ${d}: first difference at token ${at}`);
    console.log(`  expected ${JSON.stringify(Array.from(e.subarray(Math.max(0, at - 3), at + 5)))}`);
    console.log(`  actual   ${JSON.stringify(Array.from(a.subarray(Math.max(0, at - 3), at + 5)))}`);
  }
}
if (expected.length !== texts.length || actual.length !== texts.length) {
  console.log(`document counts: corpus ${texts.length}, expected ${expected.length}, ` +
    `actual ${actual.length}`);
  differing = Math.max(differing, 1);
}
console.log(`compared ${texts.length} documents, ${(bytes / 1e6).toFixed(2)} MB, ${tokens} ` +
  `tokens: ${differing} documents differ`);
process.exit(differing === 0 ? 0 : 1);
