#!/bin/sh
# On the device machine: ncu over the lab's `prof` calls (plain calls of the timed shapes).
# Usage: sh dev/cuda/prof.sh [kernel regex] [count]. Full report in $OUT/ncu.txt; per kernel:
# duration, throughputs and ncu's own sentences on the top stall reasons.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:$LD_LIBRARY_PATH
OUT=${OUT:-/tmp}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
"$NCU" --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
    --section Occupancy -k "regex:${1:-lora_(delta|decode|epilogue|tpart)}" -c "${2:-12}" \
    dev/cuda/bin/lora_fwd prof > "$OUT/ncu.txt" 2>&1
rc=$?
grep -E "^  [a-z_<].*lora_|Duration|DRAM Throughput|L2 Hit Rate|Mem Busy|Max Bandwidth|Achieved Occupancy|Warp Cycles Per Issued|spends" "$OUT/ncu.txt" \
    | sed -E 's/\(anonymous namespace\)::|<unnamed>::|void //; s/ +/ /g' | cut -c1-160
exit $rc
