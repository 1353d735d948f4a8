#!/bin/sh
# bench --suite --cases runs exactly the cases named (a trailing * matches a prefix), and succeeds.
# Usage: tests/cli_bench_cases.sh path/to/lorafuse
out=$("$1" bench --backend cpu --suite --cases 'seed_r4,seed_r1*' --iters 3) || exit 1
for want in '== seed_r4:' '== seed_r16:'; do
  printf '%s\n' "$out" | grep -q "$want" || { echo "missing: $want"; exit 1; }
done
for unwanted in '== seed:' '== seed_r32:' '== decode_m1:' '== multi_L1_m1:'; do
  printf '%s\n' "$out" | grep -q "$unwanted" && { echo "ran although not named: $unwanted"; exit 1; }
done
exit 0
