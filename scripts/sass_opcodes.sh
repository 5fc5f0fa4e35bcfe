#!/usr/bin/env bash
# Opcode histogram of the kernels whose mangled name matches REGEX in a binary (needs cuobjdump,
# which the GPU machine's toolkit has): where a kernel's instructions go, e.g. for a variant timer
# of scripts/build_attention_variant.sh.
# Usage: scripts/sass_opcodes.sh BINARY REGEX [top-N]
set -euo pipefail
binary="${1:?usage: sass_opcodes.sh BINARY REGEX [top-N]}"
regex="${2:?usage: sass_opcodes.sh BINARY REGEX [top-N]}"
top="${3:-40}"
cuobjdump -sass "$binary" | awk -v re="$regex" '
  /Function : / { keep = ($0 ~ re); if (keep) print; next }
  keep && /\/\*[0-9a-f]+\*\// {
    line = $0
    sub(/^ *\/\*[0-9a-f]+\*\/ */, "", line)  # drop the address
    sub(/^@!?U?P[0-9T] +/, "", line)        # drop a predicate
    split(line, f, /[ ;]/)
    op = f[1]
    sub(/\..*/, "", op)
    if (op != "") count[op]++
    total++
  }
  END {
    for (op in count) printf "%7d %s\n", count[op], op
    printf "%7d total\n", total
  }' | sort -rn | head -n "$((top + 1))"
