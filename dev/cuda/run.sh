#!/bin/sh
# On the device machine: validate and time the lab binary built here (carry dev/cuda/bin).
# Full log in $OUT/lora_fwd.log; the table is printed last.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:$LD_LIBRARY_PATH
OUT=${OUT:-/tmp}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader > "$OUT/gpu.txt" 2>&1
dev/cuda/bin/lora_fwd "$@" > "$OUT/lora_fwd.log" 2>&1
rc=$?
grep -E "FAIL|validation" "$OUT/lora_fwd.log" | head -40
sed -n '/^== /,$p' "$OUT/lora_fwd.log"
cat "$OUT/gpu.txt"
exit $rc
