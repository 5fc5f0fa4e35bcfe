// Builds a varied JSONL corpus ({"text": ...} per line, one document each) for checking moda's
// encoders against tiktoken: files of this machine (docs, C/C++ headers, Python sources) and
// generated adversarial strings (whitespace runs, long numbers, Unicode digits and letters of
// every script, emoji sequences, contractions, control characters). Deterministic for a given
// machine and seed.
//
//   node make_corpus.mjs --out corpus.jsonl [--mb 12] [--seed 1] [--files 0]
//       --files 0 leaves out the machine's files: generated text only.
//   node make_corpus.mjs --out strings.jsonl --golden 300
//       Short strings for golden vectors: hand-picked edge cases, then generated ones.
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";

const args = {};
for (let i = 2; i + 1 < process.argv.length; i += 2) args[process.argv[i].slice(2)] = process.argv[i + 1];
if (!args.out) throw new Error("--out is required");
const totalBytes = Number(args.mb ?? 12) * 1e6;
let seed = Number(args.seed ?? 1) >>> 0;

// mulberry32: a small seeded PRNG, so the corpus is the same on every run.
function rand() {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (xs) => xs[Math.floor(rand() * xs.length)];
const int = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));

const docs = [];
const utf8 = new TextDecoder("utf-8", { fatal: true });
const byteLength = (s) => Buffer.byteLength(s, "utf8");

function walk(dir, out, depth = 0) {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1));
  } catch {
    return;
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory() && depth < 12) walk(p, out, depth + 1);
    else if (e.isFile()) out.push(p);
  }
}

// Takes every k-th file of the tree (k chosen to spread the budget over it), as text.
function addFiles(roots, filter, budget) {
  const files = [];
  for (const r of roots) walk(r, files);
  const chosen = files.filter(filter);
  let used = 0;
  const stride = Math.max(1, Math.floor(chosen.length / 2000));
  for (let i = 0; i < chosen.length && used < budget; i += stride) {
    let data;
    try {
      if (statSync(chosen[i]).size > 4e6) continue;
      data = readFileSync(chosen[i]);
      if (chosen[i].endsWith(".gz")) data = gunzipSync(data);
    } catch {
      continue;
    }
    let text;
    try {
      text = utf8.decode(data.subarray(0, 200000));
    } catch {
      continue;  // not UTF-8 (or cut inside a character): tiktoken takes strings only
    }
    if (text.length === 0) continue;
    docs.push(text);
    used += byteLength(text);
  }
  return used;
}

const cp = (c) => String.fromCodePoint(c);
const range = (lo, hi) => Array.from({ length: hi - lo + 1 }, (_, i) => lo + i);
// Code points of every class the pre-tokenizer patterns distinguish, and near-misses.
const whitespace = [0x20, 0x20, 0x20, 0x09, 0x0a, 0x0a, 0x0d, 0x0b, 0x0c, 0x85, 0xa0, 0x1680,
  0x180e, 0x2000, 0x2007, 0x200a, 0x200b, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000, 0xfeff].map(cp);
const digits = [...range(0x30, 0x39), ...range(0x660, 0x669), ...range(0x966, 0x96f),
  ...range(0xff10, 0xff19), 0xb2, 0xb3, 0xb9, 0xbc, 0x2160, 0x2169, 0x2460, 0x2473, 0x3007,
  0x1d7ce, 0x1d7ff, 0x11f50, 0x11f59, 0x1e4f0, 0x1fbf0].map(cp);
const letters = ["a", "Z", "é", "ß", "ſ", "K", "İ", "ı", "ǅ", "ʰ", "ж", "Ж", "α", "ω", "ש",
  "ع", "क", "ก", "中", "文", "あ", "ア", "한", "ᄀ", "𝔸", "𐐀", "𠀀", "ꓐ", "ᴀ", "ª", "ℵ",
  cp(0x11f04), cp(0x31350), cp(0x2ebf0), cp(0x10d4a), cp(0x1e5d0), cp(0x16d40)];
const marks = ["\u0301", "\u0308", "\u093f", "\u094d", "\u0e31", "\u200d", "\ufe0f", "\u20e3"];
const punct = ["'", "'", "’", "\"", ".", ",", "!", "?", "-", "_", "(", ")", "{", "}", "<", ">",
  "|", "/", "\\", "#", "$", "%", "&", "*", "+", "=", "~", "`", "^", "@", ";", ":", "[", "]",
  "…", "—", "«", "»", "€", "©", "°", "¿", "¡", "\u0000", "\u0001", "\u001b", "\u007f", "\u0080",
  "\ufffd", "\ue000", "\uffff"];
const contractions = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve",
  "'LL", "'D", "'ſ", "'K", "’s", "'x", "''s", "'", "n't", "N'T"];
const emoji = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "🏳️‍🌈", "❤️", "1️⃣", "🧑🏿‍🚀", "🫠", "✈︎",
  "🤷‍♀️"];
const words = ["the", "The", "THE", "hello", "world", "naïve", "Straße", "Ελληνικά",
  "русский", "中文字符", "日本語", "한국어", "עברית", "العربية", "हिन्दी", "ไทย", "token",
  "<|endoftext|>", "<|fim_prefix|>", "<|pad|>", "http://example.com/a?b=c&d=1", "foo_bar",
  "camelCase", "x86_64", "0x1F", "3.14159", "1e-10", "__init__", "std::vector<int>"];

function numberRun() {
  const n = int(1, rand() < 0.1 ? 60 : 12);
  let s = "";
  for (let i = 0; i < n; i++) s += rand() < 0.8 ? String(int(0, 9)) : pick(digits);
  return s;
}
function whitespaceRun() {
  const n = int(1, rand() < 0.1 ? 40 : 5);
  let s = "";
  for (let i = 0; i < n; i++) s += pick(whitespace);
  return s;
}
function randomCodePoint() {
  for (;;) {
    const r = rand();
    const c = r < 0.5 ? int(0, 0xffff) : r < 0.9 ? int(0x10000, 0x3ffff) : int(0x40000, 0x10ffff);
    if (c < 0xd800 || c > 0xdfff) return cp(c);
  }
}
function atom() {
  const r = rand();
  if (r < 0.2) return pick(words);
  if (r < 0.3) return whitespaceRun();
  if (r < 0.4) return numberRun();
  if (r < 0.5) return pick(contractions);
  if (r < 0.6) return pick(letters).repeat(int(1, 4)) + (rand() < 0.3 ? pick(marks) : "");
  if (r < 0.7) return pick(punct).repeat(int(1, 3));
  if (r < 0.75) return pick(emoji);
  if (r < 0.85) return randomCodePoint();
  return " ";
}
function adversarialDoc(maxAtoms = rand() < 0.05 ? 3000 : 200) {
  const n = int(1, maxAtoms);
  let s = "";
  for (let i = 0; i < n; i++) s += atom();
  return s;
}

if (args.golden) {
  const edgeCases = ["", " ", "  ", "\n", "\n\n", " \n", "\t\t", "a", "hello world",
    "Hello, World!", "  leading", "trailing  ", "a  b", "a \n b", "x\r\n\r\ny", "1234567890",
    "12 345 6789", "3.14159", "٣٤٥", "１２３", "²³¹", "Ⅻ", "don't", "DON'T", "I'm", "we'll",
    "they've", "you're", "she'd", "it's", "'s'", "ſ's", "It'ſ", "naïve café", "Straße",
    "İstanbul", "中文字符测试", "日本語のテキスト", "한국어 텍스트", "עברית", "العربية",
    "हिन्दी", "ไทย", "😀😃😄", "👨‍👩‍👧‍👦", "🇫🇷🇩🇪", "❤️", "<|endoftext|>", "<|pad|>",
    "<|fim_prefix|>", "\u0000\u0001\u001f", "\u00a0\u3000\u2028", "\u0085x", "a\u180eb",
    "\u200b", "\ufeffBOM", "𝔸𝔹ℂ", "𐐀𐐁", "𑼄𑼅 Kawi", "𱍐𱍑", "𖵀'm", "def f(x):\n    return x",
    "int main() {\n\treturn 0;\n}", "    \n    \n", "a" .repeat(200), " ".repeat(100) + "x",
    "=".repeat(50), "http://example.com/path?q=1&r=2#frag", "user@example.com",
    "C:\\Windows\\System32", "$100.00 + 15%", "e=mc^2", "x86_64-linux-gnu", "<div class=\"x\">"];
  const strings = [...edgeCases];
  while (strings.length < Number(args.golden)) strings.push(adversarialDoc(12));
  writeFileSync(args.out, strings.map((text) => JSON.stringify({ text })).join("\n") + "\n");
  console.log(`${strings.length} strings -> ${args.out}`);
  process.exit(0);
}
const parts = [];
if (args.files !== "0") {
  parts.push(["/usr/share/doc", addFiles(["/usr/share/doc"],
    (p) => !/\.(png|jpg|gif|pdf|ico|svgz|woff2?|ttf)$/.test(p), 0.3 * totalBytes)]);
  parts.push(["/usr/include", addFiles(["/usr/include"],
    (p) => /\.(h|hpp|hxx|inc|def|tcc)$|\/c\+\+\//.test(p), 0.25 * totalBytes)]);
  const pythons = (() => {
    try {
      return readdirSync("/root/.pyenv/versions").sort().map((v) => `/root/.pyenv/versions/${v}/lib`);
    } catch {
      return [];
    }
  })();
  parts.push(["python sources", addFiles(pythons,
    (p) => p.endsWith(".py") && !p.includes("site-packages"), 0.25 * totalBytes)]);
}
// Pathological runs that stress both the regex (one class for a long stretch) and the merge
// (long pieces); sized so that tiktoken's quadratic merge still finishes quickly.
docs.push(" ".repeat(5000) + "x", "\n".repeat(3000), " \t".repeat(2000) + "\n",
  "a".repeat(4000), "1".repeat(5000), "=".repeat(3000), "😀".repeat(1000),
  "ab ".repeat(3000), "\r\n".repeat(2000), "\u3000".repeat(1000) + "a");
let used = docs.reduce((n, d) => n + byteLength(d), 0);
const fromFiles = parts.reduce((n, [, b]) => n + b, 0);
while (used < totalBytes) {
  const d = adversarialDoc();
  docs.push(d);
  used += byteLength(d);
}
writeFileSync(args.out, docs.map((text) => JSON.stringify({ text })).join("\n") + "\n");
const mb = (b) => `${(b / 1e6).toFixed(2)} MB`;
console.log(`${docs.length} documents, ${mb(used)} of text -> ${args.out}: ` +
  [...parts.map(([name, b]) => `${name} ${mb(b)}`), `generated ${mb(used - fromFiles)}`].join(", "));
