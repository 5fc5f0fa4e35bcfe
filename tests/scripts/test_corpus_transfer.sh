#!/usr/bin/env bash
# scripts/corpus_transfer.sh: pack + unpack gives back the shards byte for byte, and unpack refuses
# a shard whose CRC-32 does not match the manifest (and keeps no file under its final name).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
# Two raw uint16 token shards of random ids and their manifest, as moda tokenize writes them.
python3 - "$work/src" <<'PY'
import json, os, random, sys, zlib
out = sys.argv[1]
rng = random.Random(7)
files = []
for name, split, n in (("train-00000.npy", "train", 50000), ("val-00000.npy", "val", 3000)):
    data = b"".join(rng.randrange(50257).to_bytes(2, "little") for _ in range(n))
    open(os.path.join(out, name), "wb").write(data)
    files.append({"name": name, "split": split, "tokens": n, "documents": 1,
                  "crc32": f"{zlib.crc32(data):08x}"})
json.dump({"format": "npy", "dtype": "uint16", "tokenizer": "gpt2", "vocab_size": 50257,
           "eos": 50256, "files": files}, open(os.path.join(out, "manifest.json"), "w"))
PY
"$repo/scripts/corpus_transfer.sh" pack "$work/src" "$work/packed" > /dev/null
"$repo/scripts/corpus_transfer.sh" unpack "$work/packed" "$work/back" > /dev/null
for f in train-00000.npy val-00000.npy manifest.json; do
  cmp "$work/src/$f" "$work/back/$f" || { echo "FAIL: $f differs after pack + unpack"; exit 1; }
done
# A damaged shard: same length, one token changed.
python3 - "$work/src/val-00000.npy" <<'PY'
import sys
p = sys.argv[1]
data = bytearray(open(p, "rb").read())
data[100] ^= 0xFF
open(p, "wb").write(bytes(data))
PY
xz -9 -c "$work/src/val-00000.npy" > "$work/packed/val-00000.npy.xz"
if msg=$("$repo/scripts/corpus_transfer.sh" unpack "$work/packed" "$work/bad" 2>&1); then
  echo "FAIL: unpack accepted a shard with a wrong CRC-32"; exit 1
fi
[[ "$msg" == *"val-00000.npy: CRC-32"*"does not match the manifest"* ]] ||
  { echo "FAIL: unexpected message: $msg"; exit 1; }
[[ ! -e "$work/bad/val-00000.npy" && ! -e "$work/bad/val-00000.npy.tmp" ]] ||
  { echo "FAIL: the damaged shard was left in the output folder"; exit 1; }
echo "corpus_transfer: round trip exact, damaged shard refused"
