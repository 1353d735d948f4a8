#!/bin/sh
# On the device machine: the Hopper GEMM lab (issue 6). Build and pack here:
#   make -C dev/cuda hopper && mkdir -p .device-hopper && tar cJf .device-hopper/hopper_gemm.tar.xz -C dev/cuda/bin hopper_gemm
#   run(command="sh dev/cuda/run_hopper.sh", carry=[".device-hopper"])
# Validation of every version, then timings (full log in $OUT/hopper_gemm.log), then compute-sanitizer
# memcheck on the small shapes (`check` mode), SASS facts; the table is printed last.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:$LD_LIBRARY_PATH
export PATH=/usr/local/cuda/bin:$PATH
OUT=${OUT:-/tmp}
bin=/tmp/hopper-lab
mkdir -p $bin && tar xJf .device-hopper/hopper_gemm.tar.xz -C $bin || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader > "$OUT/gpu.txt" 2>&1
cuobjdump -sass $bin/hopper_gemm > "$OUT/hopper_gemm.sass" 2>&1
timeout 400 $bin/hopper_gemm ${1:-} > "$OUT/hopper_gemm.log" 2>&1
rc=$?
if grep -q "validation: all passed" "$OUT/hopper_gemm.log"; then
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $bin/hopper_gemm check > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$? $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -1)"
fi
echo "sass: HGMMA $(grep -c HGMMA "$OUT/hopper_gemm.sass")  local ld/st $(grep -cE 'LDL|STL' "$OUT/hopper_gemm.sass")  UTMALDG $(grep -c UTMALDG "$OUT/hopper_gemm.sass")"
grep -E "FAIL|HANG|ERROR|validation" "$OUT/hopper_gemm.log" | head -30
grep -E "^PASS samp" "$OUT/hopper_gemm.log" | cut -c1-150
sed -n '/^== /,$p' "$OUT/hopper_gemm.log"
echo "rc=$rc"; cat "$OUT/gpu.txt"
exit $rc
