#!/usr/bin/env bash
# One call on the GPU machine: every test on every backend, compute-sanitizer (memcheck, racecheck)
# on the CUDA cases, then the benchmark suite; a short table last.
#
# Build here, pack, and run through the device tool with the pack carried:
#   make build && scripts/device-check.sh --pack            # writes .device/bins.tar.xz
#   run(command="bash scripts/device-check.sh", carry=[".device"])
# Logs and the suite's JSON land in $OUT (the device tool brings them back).
# Environment (both sides): PACK=folder of the pack (default .device), TESTS=test programs to run
# (default: all), SANITIZE=those run under compute-sanitizer memcheck and racecheck, RACECHECK=
# those under racecheck if not the same, BENCH=bench arguments ("" skips it),
# BENCH_TIMEOUT=its limit in seconds (400), TEST_TIMEOUT=each test's (300).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
all_tests="test_ops test_seed test_bad_input test_plan test_multi test_safetensors test_peft test_tp"
export LF_FIXTURES="$PWD/tests/fixtures" # test_peft: the PEFT fixtures of this checkout
tests=${TESTS-$all_tests}
sanitize=${SANITIZE-test_seed test_ops}
bench_args=${BENCH---suite}
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

for t in $tests; do
  timeout "${TEST_TIMEOUT:-300}" "$bin/$t" >>"$out/tests.log" 2>&1 # a kernel that hangs shows as rc=124
  summary+=("$(printf '%-16s rc=%d  %s' "$t" $? "$(tail -n 1 "$out/tests.log")")")
done

# Seconds a test may run under a sanitizer: racecheck on test_multi takes about 3.5 minutes (213 s),
# on test_ops (with the Hopper kernel's cases) about 2 (126 s), on an H100 (2026-11-25); memcheck
# on test_ops ran past 140 s once its chained-layers cases came (2026-11-26) and within 230.
sanitize_limit() {
  case "$1:$2" in
    racecheck:test_multi) echo 420 ;;
    *:test_ops) echo 300 ;;
    *:test_multi) echo 140 ;;
    *) echo 40 ;;
  esac
}
# CUDA cases only: the CPU backend gains nothing from a GPU sanitizer and slows it down.
for tool in memcheck racecheck; do
  list=$sanitize
  [ "$tool" = racecheck ] && list=${RACECHECK-$sanitize}
  for t in $list; do
    LF_TEST_BACKENDS=cuda timeout "$(sanitize_limit "$tool" "$t")" compute-sanitizer --tool "$tool" --error-exitcode 9 "$bin/$t" \
      >/tmp/lf-sanitizer-run.log 2>&1
    rc=$?
    cat /tmp/lf-sanitizer-run.log >>"$out/sanitizer.log"
    summary+=("$(printf '%-16s rc=%d  %s' "$tool:$t" $rc "$(grep -E 'SUMMARY|passed,' /tmp/lf-sanitizer-run.log | tr '\n' ' ')")")
  done
done

if [ -n "$bench_args" ]; then
  suite_json="$out/cuda-suite-$(date +%F).json"
  # shellcheck disable=SC2086 # BENCH is a list of arguments
  timeout "${BENCH_TIMEOUT:-400}" "$bin/lorafuse" bench --backend cuda $bench_args --json "$suite_json" >"$out/bench.log" 2>&1
  summary+=("bench $bench_args rc=$? -> $(basename "$suite_json")")
fi

if [ -n "$bench_args" ]; then
  echo "---- bench (tail) ----"
  tail -n 45 "$out/bench.log"
fi
echo "---- summary ----"
printf '%s\n' "${summary[@]}"
