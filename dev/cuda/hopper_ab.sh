#!/bin/sh
# A/B of the library's Hopper kernel in the lab: the working tree's kernel against a git revision's,
# both lab binaries timed in one device call, interleaved (old, new, old, new) so that clock drift
# shows as spread, not as a difference. This is how every kernel change in dev/cuda/NOTES.md since
# the T workers' ring was measured.
#
# Here (no GPU needed):   dev/cuda/hopper_ab.sh --pack REV      # e.g. HEAD, before committing
# On the device:          run(command="sh dev/cuda/hopper_ab.sh", carry=[".device-ab"])
# Environment on the device: HOPPER_BENCH (the lab's rows, comma-separated; default below),
# ROUNDS (old/new pairs, default 2). Validation of both binaries comes first; a failure stops.
set -u
cd "$(dirname "$0")/../.."
pack=.device-ab

if [ "${1:-}" = "--pack" ]; then
  rev=${2:?usage: hopper_ab.sh --pack REV}
  old=$(mktemp -d)
  git worktree add -f --detach "$old" "$rev" >/dev/null || exit 1
  make -C dev/cuda hopper >/dev/null && make -C "$old/dev/cuda" hopper >/dev/null
  rc=$?
  mkdir -p "$pack"
  [ $rc -eq 0 ] && tar cJf "$pack/new.tar.xz" -C dev/cuda/bin hopper_gemm &&
    tar cJf "$pack/old.tar.xz" -C "$old/dev/cuda/bin" hopper_gemm && echo "packed: old = $rev, new = working tree"
  git worktree remove --force "$old"
  exit $rc
fi

export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export HOPPER_VERSIONS=8
export HOPPER_BENCH=${HOPPER_BENCH:-m768_r16,m1024_r16,sq4096_r16,m4096mlp_r16,m4096_n2048_r16}
for v in old new; do
  mkdir -p /tmp/ab-$v && tar xJf "$pack/$v.tar.xz" -C /tmp/ab-$v || exit 1
  timeout 120 /tmp/ab-$v/hopper_gemm check >/tmp/ab-check-$v.log 2>&1
  echo "$v: $(grep validation /tmp/ab-check-$v.log)"
  grep -q "validation: all passed" /tmp/ab-check-$v.log || { grep FAIL /tmp/ab-check-$v.log | head; exit 1; }
done
i=0
while [ $i -lt "${ROUNDS:-2}" ]; do
  for v in old new; do
    echo "== $v"
    timeout 200 /tmp/ab-$v/hopper_gemm 2>&1 | sed -n '/^== /,$p' | grep -E "v8|cublas-base"
  done
  i=$((i + 1))
done
