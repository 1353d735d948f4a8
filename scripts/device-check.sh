#!/usr/bin/env bash
# One call on the GPU machine: every test on every backend, compute-sanitizer (memcheck, racecheck)
# on the CUDA cases, and a bench if asked (BENCH); a short table last, and exit status 1 when a
# run failed or timed out.
#
# Build here, pack, and run through the device tool with the pack carried:
#   make build && scripts/device-check.sh --pack            # writes .device/bins.tar.xz
#   run(command="bash scripts/device-check.sh", carry=[".device"])
# Logs (tests.log, sanitizer.log, bench.log) and the bench's JSON land in $OUT (the device tool
# brings back 8 files at most).
# Environment (both sides): PACK=folder of the pack (default .device), TESTS=test programs to run
# (default: all), LF_TEST_BACKENDS=their backends (default cuda; cpu,cuda for both), SANITIZE=those
# run under compute-sanitizer memcheck and racecheck, RACECHECK=those under racecheck if not the
# same, SANITIZE_TOOLS=the compute-sanitizer tools (default "memcheck racecheck"; synccheck
# too where a change touches barriers), MULTI_FILTER=the LF_TEST_FILTER of test_multi under the
# sanitizers (default: its 16-bit cases on four shapes past 256 tokens, the tensor-core shrink and
# expand; "" runs all of it, which racecheck does not finish in 560 s), OPS_FILTER=the same for
# test_ops (default "": all of it; '^test_ops hopper' keeps the Hopper kernels' cases; the hopper,
# chained and graph replay cases honor it since 2026-11-27), BENCH=bench arguments
# (default none; e.g. "--suite"), BENCH_TIMEOUT=its limit in seconds (400), TEST_TIMEOUT=each
# test's (420: test_ops alone on CUDA takes 4–5 minutes, its Hopper and graph-replay cases checked
# against double-precision references; beside the other programs it ran past 240 s on an H100,
# 2026-11-27), SANITIZE_TIMEOUT=each sanitized run's (420).
# The tests run all at once, then the sanitized runs all at once (never beside the tests: sharing
# the GPU with them, sanitized runs timed out). On an H100 (2026-11-26) the tests took 3 minutes
# (run with LF_TEST_BACKENDS=cuda), memcheck and racecheck of test_ops beside racecheck of
# test_multi's filtered cases 6: the default set took 562 s of a call's 600, so the suite needs a
# call of its own (BENCH=--suite TESTS= SANITIZE=). TESTS="test_ops test_plan test_tp test_seed"
# SANITIZE=test_ops with two suite cases took 584 s; with OPS_FILTER='^test_ops hopper' the
# sanitized runs shrink to the Hopper kernels' ~100 cases.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
all_tests="test_ops test_seed test_bad_input test_plan test_multi test_safetensors test_peft test_tp"
export LF_FIXTURES="$PWD/tests/fixtures" # test_peft: the PEFT fixtures of this checkout
tests=${TESTS-$all_tests}
sanitize=${SANITIZE-test_seed test_ops test_multi}
multi_filter=${MULTI_FILTER-'^multi cuda (bf16|f16) .* (520x264x264|300x1100x264|264x64x1032|4500x72x136) '}
ops_filter=${OPS_FILTER-}
bench_args=${BENCH-}
pack=${PACK:-.device}

if [ "${1:-}" = "--pack" ]; then
  mkdir -p "$pack"
  # xz -9: its 64 MiB window spans whole binaries, so the nine copies of the CUDA code shrink to one
  # (34 MB at the default level, 4.4 MB so; the device tool carries 64 MiB at most)
  # shellcheck disable=SC2086 # a list of programs
  XZ_OPT=-9 tar cJf "$pack/bins.tar.xz" -C "${BUILD:-build}" lorafuse $all_tests
  ls -la "$pack/bins.tar.xz"
  exit 0
fi

out=${OUT:-/tmp/lf-device-out}
mkdir -p "$out" /tmp/lf-bin
tar xJf "$pack/bins.tar.xz" -C /tmp/lf-bin
bin=/tmp/lf-bin
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
summary=()

# runs "$@" with limit $2 into log $1 (line-buffered: a run stopped at its limit keeps its output)
# and appends its status as the log's last line
run_logged() {
  local log=$1 limit=$2
  shift 2
  timeout -k 10 "$limit" stdbuf -oL -eL "$@" >"$log" 2>&1 # a kernel that hangs shows as rc=124
  printf '\nrc=%s\n' "$?" >>"$log"
}
failed=0
# adds a run's summary line (name, status, its last summary lines) and appends its log to $out/$4
summarize() { # name, log, summary regex, joined log
  [ "$(tail -n 1 "$2")" = rc=0 ] || failed=1
  printf '==== %s\n' "$1" >>"$out/$4"
  cat "$2" >>"$out/$4"
  summary+=("$(printf '%-22s %s  %s' "$1" "$(tail -n 1 "$2")" "$(grep -E "$3" "$2" | tail -n 2 | tr '\n' ' ')")")
}
logs=/tmp/lf-device-logs # one log a run; $out gets them joined (the device tool brings back 8 files)
rm -rf "$logs" && mkdir -p "$logs"

# The CUDA cases only unless LF_TEST_BACKENDS says otherwise: CI runs the CPU ones, and with them
# test_multi passed its 300 s beside the other programs (H100, 2026-11-27)
export LF_TEST_BACKENDS=${LF_TEST_BACKENDS-cuda}
for t in $tests; do # all at once: their CPU references dominate, and the machine has 16 cores
  run_logged "$logs/$t.log" "${TEST_TIMEOUT:-420}" "$bin/$t" &
done
wait
for t in $tests; do
  summarize "$t" "$logs/$t.log" 'passed, .* failed' tests.log
done

# CUDA cases only: the CPU backend gains nothing from a GPU sanitizer and slows it down.
for tool in ${SANITIZE_TOOLS-memcheck racecheck}; do
  list=$sanitize
  [ "$tool" = racecheck ] && list=${RACECHECK-$sanitize}
  for t in $list; do
    filter=
    [ "$t" = test_multi ] && filter=$multi_filter
    [ "$t" = test_ops ] && filter=$ops_filter
    LF_TEST_BACKENDS=cuda LF_TEST_FILTER=$filter run_logged "$logs/$tool-$t.log" "${SANITIZE_TIMEOUT:-420}" \
      compute-sanitizer --tool "$tool" --error-exitcode 9 "$bin/$t" &
  done
done
wait
for tool in ${SANITIZE_TOOLS-memcheck racecheck}; do
  list=$sanitize
  [ "$tool" = racecheck ] && list=${RACECHECK-$sanitize}
  for t in $list; do
    summarize "$tool:$t" "$logs/$tool-$t.log" 'SUMMARY|passed, .* failed' sanitizer.log
  done
done

if [ -n "$bench_args" ]; then
  suite_json="$out/cuda-suite-$(date +%F).json"
  # shellcheck disable=SC2086 # BENCH is a list of arguments
  timeout "${BENCH_TIMEOUT:-400}" "$bin/lorafuse" bench --backend cuda $bench_args --json "$suite_json" >"$out/bench.log" 2>&1
  rc=$?
  [ $rc -eq 0 ] || failed=1
  summary+=("bench $bench_args rc=$rc -> $(basename "$suite_json")")
fi

if [ -n "$bench_args" ]; then
  echo "---- bench (tail) ----"
  tail -n 45 "$out/bench.log"
fi
echo "---- summary ----"
printf '%s\n' "${summary[@]}"
exit $failed
