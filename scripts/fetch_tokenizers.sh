#!/usr/bin/env bash
# Fetches the BPE rank files of the "gpt2" and "dolma2" tokenizers into the tokenizer cache.
#
# They come from the npm package `tiktoken` (its encoders/*.json: pat_str, special_tokens and the
# ranks in tiktoken's compact form), because the npm registry is the one place our machines reach.
# moda reads those JSON files as they are (docs/data.md). The package version and the files'
# SHA-256 are pinned, so every machine tokenizes with the same ranks.
#
# Usage: scripts/fetch_tokenizers.sh [CACHE_DIR]
#   CACHE_DIR defaults to $MODA_TOKENIZER_CACHE, else <repo>/.cache/tokenizers (the place
#   moda::default_tokenizer_cache() looks in).
set -euo pipefail

readonly TIKTOKEN_VERSION=1.0.22
readonly -A SHA256=(
  [gpt2.json]=199cf7ee5013d4cd95015d672fdc9d9d8ebf942f69fc5ed424148add1f533493
  [cl100k_base.json]=49a4e05dea02c8fafbd50cc4725c4aab8f39386c0afedef118e0dfebc2fe523a
)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${1:-${MODA_TOKENIZER_CACHE:-$repo/.cache/tokenizers}}"
mkdir -p "$cache"

have_all() {
  local f
  for f in "${!SHA256[@]}"; do
    [[ -f "$cache/$f" ]] && echo "${SHA256[$f]}  $cache/$f" | sha256sum --check --status || return 1
  done
}

if have_all; then
  echo "tokenizer files already in $cache"
  exit 0
fi

command -v npm >/dev/null || { echo "fetch_tokenizers.sh: npm is needed (apt-get install npm)" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "tiktoken@$TIKTOKEN_VERSION" >/dev/null)
tar -xzf "$tmp"/tiktoken-"$TIKTOKEN_VERSION".tgz -C "$tmp" package/encoders

for f in "${!SHA256[@]}"; do
  echo "${SHA256[$f]}  $tmp/package/encoders/$f" | sha256sum --check --status ||
    { echo "fetch_tokenizers.sh: $f of tiktoken@$TIKTOKEN_VERSION has an unexpected SHA-256" >&2; exit 1; }
  # Written under a temporary name and renamed, so a reader never sees half a file.
  cp "$tmp/package/encoders/$f" "$cache/.$f.tmp"
  mv "$cache/.$f.tmp" "$cache/$f"
done
echo "tokenizer files (tiktoken@$TIKTOKEN_VERSION) in $cache"
