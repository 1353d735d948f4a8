#!/bin/sh
# A/B of whole-library changes with `lorafuse bench`: the working tree's CLI against one or more
# git revisions', all timed in one device call, interleaved (a, b, new, a, b, new) so that clock
# drift shows as spread, not as a difference. dev/cuda/hopper_ab.sh does the same for the Hopper
# kernel's lab; this one times what a user calls (plans, launches, streams included).
#
# Here (no GPU needed):   scripts/bench-ab.sh --pack REV...     # builds each revision's CLI
#                         (a revision built before comes from .device-bench-ab-cache)
# On the device:          run(command="sh scripts/bench-ab.sh", carry=[".device-bench-ab"])
# With TESTS="test_ops test_plan" at --pack, each revision's test programs are packed too, and the
# device runs them on CUDA first, all at once (a line each), so that one call checks and times
# several branches. scripts/ab-json.py turns the output into a bench/results JSON.
# Environment on the device:
#   BENCH     the bench arguments (default the many-adapter decode cases); several runs separated
#             by ';', e.g. "--suite --cases decode_m1;--m 16 --k 4096 --n 11008 --rank 16 --dtype bf16"
#   MATCH     an extended regex over the output's lines (default the summary rows of the cases)
#   ROUNDS    rounds of the interleaved bench (default 2)
#   BUILDS    the packed builds to test and time, by name ("new 2e0f112" or "new,2e0f112"; default all)
#   RUN_TESTS=0  time only: the packed tests are not run (SANITIZE still is)
#   TEST_TIMEOUT  each test program's limit in seconds (default 300)
#   SANITIZE  BUILD:PROGRAM pairs ("new:test_ops") run under compute-sanitizer memcheck and
#             racecheck beside the tests, before any timing, each within SANITIZE_TIMEOUT (default
#             TEST_TIMEOUT). Sanitized programs share the GPU with everything else: slow ones
#             (test_multi) need a call of their own, or SANITIZE_FILTER.
#   SANITIZE_FILTER  LF_TEST_FILTER (a regex over the case names) for the sanitized runs only
#   VARIANTS  more timed entries from a packed build under one environment setting each,
#             "BUILD:VAR=VALUE" separated by spaces (e.g. "new:LF_CUDA_MULTI_GRID_Y=4": the
#             working tree's CLI timed a second time with that knob, as the entry
#             "new:LF_CUDA_MULTI_GRID_Y=4", interleaved with the others); not tested again
# Everything goes to stdout (the device tool brings back few files); the exit status is 1 when a
# test or sanitizer run failed or timed out, a bench run failed, or a named build is missing.
set -u
cd "$(dirname "$0")/.." || exit 1
pack=.device-bench-ab
# builds of committed revisions, kept between packs by full hash (a revision's build does not
# change), so that an A/B against the same baseline again builds only the working tree
cache=.device-bench-ab-cache

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

from_cache() { # full hash, name: the cached build into the pack, if it holds every program asked for
  for prog in lorafuse $tests; do [ -x "$cache/$1/$prog" ] || return 1; done
  mkdir -p "$pack/b/$2" || return 1
  for prog in lorafuse $tests; do cp "$cache/$1/$prog" "$pack/b/$2/" || return 1; done
  echo "$2: $(git log --oneline -1 "$1" | cut -c1-100)" >>"$pack/names.txt"
}

if [ "${1:-}" = "--pack" ]; then
  shift
  [ $# -ge 1 ] || { echo "usage: bench-ab.sh --pack REV..." >&2; exit 2; }
  rm -rf "$pack" && mkdir -p "$pack"
  work=$(mktemp -d)
  # the working tree in a folder kept between packs (ignored by git), so that it builds incrementally
  mkdir -p build-bench-ab && build_cli . build-bench-ab/new new || exit 1
  for rev in "$@"; do
    name=$(git rev-parse --short "$rev") && full=$(git rev-parse "$rev^{commit}") || exit 1
    if from_cache "$full" "$name"; then
      echo "$name: from $cache"
      continue
    fi
    git worktree add -f --detach "$work/src-$name" "$rev" >/dev/null || exit 1
    build_cli "$work/src-$name" "$work/build-$name" "$name"
    rc=$?
    git worktree remove --force "$work/src-$name"
    [ $rc -eq 0 ] || exit $rc
    mkdir -p "$cache/$full" && cp "$pack/b/$name"/* "$cache/$full/"
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
failed=/tmp/bench-ab/failed
: >"$failed"
if [ -n "${BUILDS:-}" ]; then # keep only the builds named
  builds=$(echo "$BUILDS" | tr ',\t' '  ')
  for name in $builds; do
    [ -d "/tmp/bench-ab/b/$name" ] || echo "BUILDS: no build $name in the pack" | tee -a "$failed"
  done
  for dir in /tmp/bench-ab/b/*; do
    case " $builds " in *" $(basename "$dir") "*) ;; *) rm -rf "$dir" ;; esac
  done
fi
ls /tmp/bench-ab/b/*/lorafuse >/dev/null 2>&1 || { echo "no build left to run"; exit 1; }
v=0 # a timed entry a variant: the build's CLI, the setting it runs under and the entry's name (the
# folder is numbered: env would take a path with "=" in it for one more setting)
for variant in ${VARIANTS:-}; do
  build=${variant%%:*} setting=${variant#*:}
  case "$setting" in *=*) ;; *) echo "VARIANTS: $variant is not BUILD:VAR=VALUE" | tee -a "$failed"; continue ;; esac
  [ -x "/tmp/bench-ab/b/$build/lorafuse" ] || { echo "VARIANTS: no build $build" | tee -a "$failed"; continue; }
  v=$((v + 1))
  mkdir -p "/tmp/bench-ab/v/$v" && ln -sf "/tmp/bench-ab/b/$build/lorafuse" "/tmp/bench-ab/v/$v/lorafuse" &&
    echo "$setting" >"/tmp/bench-ab/v/$v/setting" && echo "$variant" >"/tmp/bench-ab/v/$v/name"
done
export LF_FIXTURES="$PWD/tests/fixtures" # test_peft: the PEFT fixtures of this checkout
export LF_TEST_BACKENDS=cuda
# runs "$@" into log $1 with limit $2, line-buffered (a run killed at its limit keeps its output),
# and appends its status as the log's last line
run_logged() {
  log=$1 limit=$2
  shift 2
  timeout -k 10 "$limit" stdbuf -oL -eL "$@" >"$log" 2>&1
  printf '\nrc=%s\n' "$?" >>"$log"
}
# the tests of every build at once (their CPU references dominate, and the device has 16 cores)
for dir in /tmp/bench-ab/b/*; do
  for t in "$dir"/test_*; do
    { [ -x "$t" ] && [ "${RUN_TESTS:-1}" != 0 ]; } || continue
    run_logged "/tmp/bench-ab/$(basename "$dir")-$(basename "$t").log" "${TEST_TIMEOUT:-300}" "$t" &
  done
done
for pair in ${SANITIZE:-}; do # BUILD:PROGRAM under memcheck and racecheck, beside the tests
  build=${pair%%:*} prog=${pair#*:}
  [ -x "/tmp/bench-ab/b/$build/$prog" ] || { echo "SANITIZE: no $build/$prog in the pack" | tee -a "$failed"; continue; }
  mkdir -p /tmp/bench-ab/san
  for tool in memcheck racecheck; do
    run_logged "/tmp/bench-ab/san/$build-$prog-$tool.log" "${SANITIZE_TIMEOUT:-${TEST_TIMEOUT:-300}}" \
      env LF_TEST_FILTER="${SANITIZE_FILTER:-}" \
      compute-sanitizer --error-exitcode 99 --tool "$tool" "/tmp/bench-ab/b/$build/$prog" &
  done
done
wait
# prints a run's line (name, status, its last summary) and records it when it failed
report() { # kind, log, summary regex
  rc=$(tail -n 1 "$2")
  echo "$1 $(basename "$2" .log) $rc $(grep -E "$3" "$2" | tail -n 1)"
  grep -E "^FAIL|check failed" "$2" | head -n 5
  [ "$rc" = rc=0 ] || echo "$1 $(basename "$2" .log) $rc" >>"$failed"
}
for log in /tmp/bench-ab/san/*.log; do
  [ -f "$log" ] && report sanitizer "$log" "ERROR SUMMARY|RACECHECK SUMMARY"
done
for log in /tmp/bench-ab/*-test_*.log; do
  [ -f "$log" ] && report test "$log" "passed, .* failed"
done
i=0
while [ $i -lt "${ROUNDS:-2}" ]; do
  for bin in /tmp/bench-ab/b/*/lorafuse /tmp/bench-ab/v/*/lorafuse; do
    [ -e "$bin" ] || continue # no variants
    dir=$(dirname "$bin") name=$(basename "$(dirname "$bin")") setting=
    [ -f "$dir/setting" ] && setting=$(cat "$dir/setting") name=$(cat "$dir/name")
    echo "== $name"
    echo "$bench" | tr ';' '\n' | while read -r args; do
      # shellcheck disable=SC2086 # each run's arguments are a list; the setting, one VAR=VALUE or none
      timeout -k 10 300 env $setting "$bin" bench $args </dev/null >/tmp/bench-ab/bench.log 2>&1
      rc=$?
      grep -E "$match" /tmp/bench-ab/bench.log
      [ $rc -eq 0 ] || echo "bench $name rc=$rc: $args" | tee -a "$failed"
    done
  done
  i=$((i + 1))
done
if [ -s "$failed" ]; then
  sed 's/^/FAILED: /' "$failed"
  exit 1
fi
