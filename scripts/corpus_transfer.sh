#!/usr/bin/env bash
# Moves a tokenized corpus (moda tokenize output: *.npy shards + manifest.json) to a machine that
# only receives a size-limited copy of the working tree, such as the device tool's GPU machine
# (64 MiB per call). The 67.3M-token GPT-2 corpus is 135 MB as uint16 and 42 MB with xz -9.
#   scripts/corpus_transfer.sh pack   [SRC=data/corpus/gpt2] [DST=.corpus-xz]
#   scripts/corpus_transfer.sh unpack [SRC=.corpus-xz]      [DST=data/corpus/gpt2]
# unpack checks every shard's CRC-32 against the manifest (python3 zlib) before it keeps it.
# Keep DST of pack out of git (.git/info/exclude) and name it in the device call's carry list.
set -euo pipefail
die() { echo "corpus_transfer: $*" >&2; exit 2; }
mode="${1:-}"
case "$mode" in
  pack)
    src="${2:-data/corpus/gpt2}" dst="${3:-.corpus-xz}"
    [[ -f "$src/manifest.json" ]] || die "no $src/manifest.json (run scripts/prepare_corpus.sh)"
    mkdir -p "$dst"
    cp "$src/manifest.json" "$dst/"
    for f in "$src"/*.npy; do
      xz -9 -T0 -c "$f" > "$dst/$(basename "$f").xz.tmp"
      mv "$dst/$(basename "$f").xz.tmp" "$dst/$(basename "$f").xz"
    done
    du -sh "$dst"
    ;;
  unpack)
    src="${2:-.corpus-xz}" dst="${3:-data/corpus/gpt2}"
    [[ -f "$src/manifest.json" ]] || die "no $src/manifest.json (pack first)"
    mkdir -p "$dst"
    for f in "$src"/*.npy.xz; do
      xz -dc -T0 "$f" > "$dst/$(basename "$f" .xz).tmp"
    done
    python3 - "$src/manifest.json" "$dst" <<'PY'
import json, os, sys, zlib
manifest, dst = sys.argv[1], sys.argv[2]
for entry in json.load(open(manifest))["files"]:
    tmp = os.path.join(dst, entry["name"] + ".tmp")
    # Token .npy files are raw arrays (docs/data.md); the manifest's CRC-32 covers the whole file.
    crc = 0
    with open(tmp, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    if f"{crc:08x}" != entry["crc32"]:
        os.remove(tmp)
        sys.exit(f"corpus_transfer: {entry['name']}: CRC-32 {crc:08x} does not match the "
                 f"manifest's {entry['crc32']}")
    os.replace(tmp, os.path.join(dst, entry["name"]))
    print(f"corpus_transfer: {entry['name']}: {entry['tokens']:,} tokens, CRC-32 ok")
PY
    cp "$src/manifest.json" "$dst/"
    ;;
  *) die "usage: $0 pack|unpack [SRC] [DST]" ;;
esac
