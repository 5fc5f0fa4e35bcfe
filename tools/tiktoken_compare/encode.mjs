// Encodes documents with npm tiktoken (the WASM build of OpenAI's Rust tiktoken), to check
// moda's BPE encoders against and to time them on the same text.
//
//   node encode.mjs --encoding gpt2|cl100k_base --input docs.jsonl --output ids.u32 [--eos ID]
//       Each input line is a JSON object whose "text" is one document. Writes the ids of all
//       documents as little-endian uint32, each document followed by --eos when given (the layout
//       of `moda tokenize --format npy --dtype uint32 --val-fraction 0`), and prints the
//       encode-only throughput (single thread).
//   node encode.mjs --input strings.jsonl --golden out.jsonl
//       Writes {"text": ..., "gpt2": [...], "cl100k_base": [...]} per input line: the golden
//       vectors of tests/data/.
import { readFileSync, writeFileSync } from "node:fs";
import { get_encoding } from "tiktoken";

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
      throw new Error(`bad argument ${argv[i]}; see the header of encode.mjs for usage`);
    }
    args[argv[i].slice(2)] = argv[i + 1];
  }
  for (const required of ["input", ...(args.golden ? [] : ["encoding"])]) {
    if (!(required in args)) throw new Error(`--${required} is required`);
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
const texts = readFileSync(args.input, "utf8")
  .split("\n")
  .filter((line) => line.length > 0)
  .map((line) => JSON.parse(line).text);

if (args.golden) {
  const gpt2 = get_encoding("gpt2");
  const cl100k = get_encoding("cl100k_base");
  const lines = texts.map((text) => JSON.stringify({
    text,
    gpt2: Array.from(gpt2.encode_ordinary(text)),
    cl100k_base: Array.from(cl100k.encode_ordinary(text)),
  }));
  writeFileSync(args.golden, lines.join("\n") + "\n");
  gpt2.free();
  cl100k.free();
} else {
  const enc = get_encoding(args.encoding);
  const eos = args.eos === undefined ? null : Number(args.eos);
  const pieces = [];
  let bytes = 0;
  let tokens = 0;
  let seconds = 0;
  const cpuStart = process.cpuUsage();
  for (const text of texts) {
    bytes += Buffer.byteLength(text, "utf8");
    const start = process.hrtime.bigint();
    const ids = enc.encode_ordinary(text);
    seconds += Number(process.hrtime.bigint() - start) / 1e9;
    tokens += ids.length;
    pieces.push(ids);
    if (eos !== null) pieces.push(Uint32Array.of(eos));
  }
  if (args.output) {
    const total = pieces.reduce((n, p) => n + p.length, 0);
    const out = new Uint32Array(total);
    let at = 0;
    for (const p of pieces) {
      out.set(p, at);
      at += p.length;
    }
    writeFileSync(args.output, Buffer.from(out.buffer));
  }
  // CPU time of the whole loop (the encode calls dominate it), less sensitive than wall time to
  // other load on the machine.
  const cpu = process.cpuUsage(cpuStart);
  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  const mb = bytes / 1e6;
  console.log(
    `tiktoken ${args.encoding}: ${texts.length} docs, ${mb.toFixed(2)} MB, ${tokens} tokens, ` +
      `encode ${seconds.toFixed(3)} s, ${(mb / seconds).toFixed(2)} MB/s ` +
      `(CPU ${cpuSeconds.toFixed(3)} s, ${(mb / cpuSeconds).toFixed(2)} MB/s)`);
  enc.free();
}
