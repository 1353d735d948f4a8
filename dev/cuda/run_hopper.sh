#!/bin/sh
# On the device machine: the Hopper GEMM lab (issue 6). Build and pack here:
#   make -C dev/cuda hopper && mkdir -p .device-hopper && tar cJf .device-hopper/hopper_gemm.tar.xz -C dev/cuda/bin hopper_gemm
#   run(command="HOPPER_VERSIONS=2,3,7 NCU='4096,4096,4096,0,3 1024,4096,4096,16,7' sh dev/cuda/run_hopper.sh",
#       carry=[".device-hopper"])
# Validation of the versions in HOPPER_VERSIONS (default all), then timings (full log in
# $OUT/hopper_gemm.log), then compute-sanitizer memcheck on the small shapes (`check` mode, versions
# MEMCHECK_VERSIONS, default the same), then ncu of each "M,N,K,r,version" in NCU (tensor pipe,
# stall reasons; --clock-control none: the card's clocks stay as they are), SASS facts; the table last.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:$LD_LIBRARY_PATH
export PATH=/usr/local/cuda/bin:$PATH
OUT=${OUT:-/tmp}
bin=/tmp/hopper-lab
mkdir -p $bin && tar xJf .device-hopper/hopper_gemm.tar.xz -C $bin || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader > "$OUT/gpu.txt" 2>&1
cuobjdump -sass $bin/hopper_gemm > "$OUT/hopper_gemm.sass" 2>&1
timeout 300 $bin/hopper_gemm ${1:-} > "$OUT/hopper_gemm.log" 2>&1
rc=$?
if grep -q "validation: all passed" "$OUT/hopper_gemm.log"; then
  HOPPER_VERSIONS=${MEMCHECK_VERSIONS:-$HOPPER_VERSIONS} timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 \
    $bin/hopper_gemm check > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$? $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -1)"
  for spec in ${NCU:-}; do
    f="$OUT/ncu_$(echo "$spec" | tr , _).txt"
    timeout 90 ncu --clock-control none -k regex:hopper_gemm_kernel --launch-skip 1 --launch-count 1 \
      --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section MemoryWorkloadAnalysis \
      $bin/hopper_gemm profile $(echo "$spec" | tr , ' ') > "$f" 2>&1
    echo "ncu $spec rc=$?"
    grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Executed Ipc A|Issue Slots Busy|L2 Hit Rate|Warp Cycles Per Issued|Stall|Tensor|Pipe" "$f" | head -14
  done
fi
echo "sass: HGMMA $(grep -c HGMMA "$OUT/hopper_gemm.sass")  local ld/st $(grep -cE 'LDL|STL' "$OUT/hopper_gemm.sass")  UTMALDG $(grep -c UTMALDG "$OUT/hopper_gemm.sass")"
grep -E "FAIL|HANG|ERROR|validation|SKIP" "$OUT/hopper_gemm.log" | head -30
grep -E "^PASS samp" "$OUT/hopper_gemm.log" | cut -c1-150
sed -n '/^== /,$p' "$OUT/hopper_gemm.log"
echo "rc=$rc"; cat "$OUT/gpu.txt"
exit $rc
