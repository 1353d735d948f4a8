#!/bin/sh
# A/B of whole-library changes with `lorafuse bench`: the working tree's CLI against one or more
# git revisions', all timed in one device call, interleaved (a, b, new, a, b, new) so that clock
# drift shows as spread, not as a difference. dev/cuda/hopper_ab.sh does the same for the Hopper
# kernel's lab; this one times what a user calls (plans, launches, streams included).
#
# Here (no GPU needed):   scripts/bench-ab.sh --pack REV...     # builds each revision's CLI
# On the device:          run(command="sh scripts/bench-ab.sh", carry=[".device-bench-ab"])
# With TESTS="test_ops test_plan" at --pack, each revision's test programs are packed too, and the
# device runs them on CUDA first, all at once (a line each; TEST_TIMEOUT seconds, default 300), so that one call
# checks and times several branches.
# Environment on the device: BENCH (the bench arguments; default the many-adapter decode cases;
# several runs separated by ';', e.g. "--suite --cases decode_m1;--m 16 --k 4096 --n 11008 --rank
# 16 --dtype bf16"), MATCH (an extended regex over its table rows; default every row of a case),
# ROUNDS (default 2), BUILDS (the packed builds to test and time, by name, e.g. "new 2e0f112";
# default all), RUN_TESTS=0 (time only: the packed tests not run), SANITIZE (BUILD:PROGRAM pairs, e.g. "new:test_ops", run under compute-sanitizer
# memcheck and racecheck beside the tests, before any timing). Everything goes to stdout (the device tool brings back few files).
set -u
cd "$(dirname "$0")/.." || exit 1
pack=.device-bench-ab

tests=${TESTS:-}
build_cli() { # source tree, build folder, name; the build's output only when it fails
  # shellcheck disable=SC2086 # TESTS is a list of targets
  { cmake -S "$1" -B "$2" && cmake --build "$2" -j "$(nproc)" --target lorafuse_cli $tests; } >"$2.log" 2>&1 ||
    { cat "$2.log"; return 1; }
  # one folder a build: xz's 64 MiB window then spans its programs, whose CUDA code is the same
  mkdir -p "$pack/b/$3" && cp "$2/lorafuse" "$pack/b/$3/" || return 1
  for t in $tests; do cp "$2/$t" "$pack/b/$3/" || return 1; done
  echo "$3: $(git -C "$1" log --oneline -1 | cut -c1-100)" >>"$pack/names.txt"
}

if [ "${1:-}" = "--pack" ]; then
  shift
  [ $# -ge 1 ] || { echo "usage: bench-ab.sh --pack REV..." >&2; exit 2; }
  rm -rf "$pack" && mkdir -p "$pack"
  work=$(mktemp -d)
  build_cli . "$work/new" new || exit 1
  for rev in "$@"; do
    name=$(git rev-parse --short "$rev") || exit 1
    git worktree add -f --detach "$work/src-$name" "$rev" >/dev/null || exit 1
    build_cli "$work/src-$name" "$work/build-$name" "$name"
    rc=$?
    git worktree remove --force "$work/src-$name"
    [ $rc -eq 0 ] || exit $rc
  done
  XZ_OPT=-9 tar cJf "$pack/bins.tar.xz" -C "$pack" b names.txt && rm -rf "$pack/b" "$pack/names.txt" "$work"
  echo "packed ($(du -h "$pack/bins.tar.xz" | cut -f1)): $(tar tJf "$pack/bins.tar.xz" |
    sed -n 's|^b/\([^/]*\)/lorafuse$|\1|p' | tr '\n' ' ')(new = the working tree)"
  exit 0
fi

bench=${BENCH:---backend cuda --suite --cases multi_L8_m1,multi_L8_m16}
match=${MATCH:-^[A-Za-z_0-9]+ +[a-z_]+ +(f32|f16|bf16) }
rm -rf /tmp/bench-ab && mkdir -p /tmp/bench-ab && tar xJf "$pack/bins.tar.xz" -C /tmp/bench-ab || exit 1
cat /tmp/bench-ab/names.txt
if [ -n "${BUILDS:-}" ]; then # keep only the builds named
  for dir in /tmp/bench-ab/b/*; do
    case " $BUILDS " in *" $(basename "$dir") "*) ;; *) rm -rf "$dir" ;; esac
  done
fi
export LF_FIXTURES="$PWD/tests/fixtures" # test_peft: the PEFT fixtures of this checkout
# the tests of every build at once (their CPU references dominate, and the device has 16 cores)
for dir in /tmp/bench-ab/b/*; do
  for t in "$dir"/test_*; do
    { [ -x "$t" ] && [ "${RUN_TESTS:-1}" != 0 ]; } || continue
    log="/tmp/bench-ab/$(basename "$dir")-$(basename "$t").log"
    (LF_TEST_BACKENDS=cuda timeout "${TEST_TIMEOUT:-300}" "$t" >"$log" 2>&1; echo "rc=$?" >>"$log") &
  done
done
for pair in ${SANITIZE:-}; do # BUILD:PROGRAM under memcheck and racecheck, beside the tests
  build=${pair%%:*} prog=${pair#*:}
  [ -x "/tmp/bench-ab/b/$build/$prog" ] || { echo "SANITIZE: no $build/$prog in the pack"; continue; }
  for tool in memcheck racecheck; do
    mkdir -p /tmp/bench-ab/san && log="/tmp/bench-ab/san/$build-$prog-$tool.log"
    (LF_TEST_BACKENDS=cuda timeout "${TEST_TIMEOUT:-300}" compute-sanitizer --tool "$tool" \
      "/tmp/bench-ab/b/$build/$prog" >"$log" 2>&1; echo "rc=$?" >>"$log") &
  done
done
wait
for log in /tmp/bench-ab/san/*.log; do
  [ -f "$log" ] || continue
  echo "sanitizer $(basename "$log" .log) $(tail -n 1 "$log") $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -n 1)"
  grep -E "^FAIL" "$log" | head -n 3
done
for log in /tmp/bench-ab/*-test_*.log; do
  [ -f "$log" ] || continue
  echo "test $(basename "$log" .log) $(tail -n 1 "$log") $(tail -n 2 "$log" | head -n 1)"
  grep -E "^FAIL|check failed" "$log" | head -n 5
done
i=0
while [ $i -lt "${ROUNDS:-2}" ]; do
  for bin in /tmp/bench-ab/b/*/lorafuse; do
    echo "== $(basename "$(dirname "$bin")")"
    echo "$bench" | tr ';' '\n' | while read -r args; do
      # shellcheck disable=SC2086 # each run's arguments are a list
      timeout 300 "$bin" bench $args </dev/null 2>&1 | grep -E "$match"
    done
  done
  i=$((i + 1))
done
