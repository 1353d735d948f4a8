#!/bin/sh
# A/B of the library's Hopper kernel in the lab: the working tree's kernel against one or more git
# revisions', every lab binary timed in one device call, interleaved (a, b, new, a, b, new) so that
# clock drift shows as spread, not as a difference. This is how every kernel change in
# dev/cuda/NOTES.md since the T workers' ring was measured.
#
# Here (no GPU needed):   dev/cuda/hopper_ab.sh --pack REV...   # e.g. HEAD, before committing
# On the device:          run(command="sh dev/cuda/hopper_ab.sh", carry=[".device-ab"])
# Environment on the device: HOPPER_BENCH (the lab's rows, comma-separated; default below),
# ROUNDS (rounds over all binaries, default 2). Every binary is validated first; a failure drops
# that binary from the timing (and says so), the others still run.
set -u
cd "$(dirname "$0")/../.."
pack=.device-ab

if [ "${1:-}" = "--pack" ]; then
  shift
  [ $# -ge 1 ] || { echo "usage: hopper_ab.sh --pack REV..." >&2; exit 2; }
  rm -rf "$pack" && mkdir -p "$pack"
  make -C dev/cuda hopper >/dev/null && tar cJf "$pack/new.tar.xz" -C dev/cuda/bin hopper_gemm || exit 1
  for rev in "$@"; do
    name=$(git rev-parse --short "$rev") || exit 1
    tree=$(mktemp -d)
    git worktree add -f --detach "$tree" "$rev" >/dev/null || exit 1
    make -C "$tree/dev/cuda" hopper >/dev/null && tar cJf "$pack/$name.tar.xz" -C "$tree/dev/cuda/bin" hopper_gemm
    rc=$?
    git worktree remove --force "$tree"
    [ $rc -eq 0 ] || exit $rc
  done
  echo "packed: $(ls "$pack" | sed 's/.tar.xz//' | tr '\n' ' ')(new = the working tree)"
  exit 0
fi

export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export HOPPER_VERSIONS=8
export HOPPER_BENCH=${HOPPER_BENCH:-m768_r16,m1024_r16,sq4096_r16,m4096mlp_r16,m4096_n2048_r16}
valid=""
for tarball in "$pack"/*.tar.xz; do
  v=$(basename "$tarball" .tar.xz)
  mkdir -p "/tmp/ab-$v" && tar xJf "$tarball" -C "/tmp/ab-$v" || exit 1
  timeout 120 "/tmp/ab-$v/hopper_gemm" check >"/tmp/ab-check-$v.log" 2>&1
  echo "$v: $(grep validation "/tmp/ab-check-$v.log")"
  if grep -q "validation: all passed" "/tmp/ab-check-$v.log"; then
    valid="$valid $v"
  else
    grep FAIL "/tmp/ab-check-$v.log" | head
    tail -n 3 "/tmp/ab-check-$v.log"
  fi
done
i=0
while [ $i -lt "${ROUNDS:-2}" ]; do
  for v in $valid; do
    echo "== $v"
    timeout 200 "/tmp/ab-$v/hopper_gemm" 2>&1 | sed -n '/^== /,$p' | grep -E "v8|cublas-base"
  done
  i=$((i + 1))
done
