#!/usr/bin/env bash
# Installs what lorafuse needs to build and test on a Debian/Ubuntu machine, when it is missing.
# Run by `make` (as root it installs with apt-get; otherwise it says what to install and fails).
set -euo pipefail

# package: what it provides
needed=(
  build-essential   # gcc, make
  cmake
  pkg-config
  libopenblas-dev   # CBLAS for the CPU base GEMM
  libjansson-dev    # JSON for bench results and adapter configs
)
# Fuzzing only (`scripts/install-deps.sh --fuzz` or LF_FUZZ=1; not needed to build or test):
if [ "${1:-}" = "--fuzz" ] || [ "${LF_FUZZ:-0}" = 1 ]; then
  needed+=(clang libclang-rt-dev)   # libFuzzer and the sanitizer runtimes (fuzz/CMakeLists.txt)
fi
missing=()
for pkg in "${needed[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "lorafuse needs: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
