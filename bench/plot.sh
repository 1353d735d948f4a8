#!/usr/bin/env bash
# Draws the layer cases of a bench JSON (lorafuse bench --json) as grouped bars: per case, lorafuse's
# fused layer and the unfused PEFT-style sequence, each as a multiple of the base GEMM alone measured
# in the same run (1.0 = the layer costs what its base GEMM costs). Needs gnuplot and python3
# (Debian: apt-get install gnuplot-nox python3).
#   bench/plot.sh bench/results/X.json bench/results/X.png
set -euo pipefail
json=$1 png=$2
dat=$(mktemp)
trap 'rm -f "$dat"' EXIT
python3 - "$json" >"$dat" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
print("# case fused/base unfused/base")
for c in doc["cases"]:
    if c["op"] == "layer" and "fused_us" in c and "base_us" in c:
        print(c["name"], c["fused_us"] / c["base_us"], c.get("unfused_us", float("nan")) / c["base_us"])
PY
title=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["device"] + ", " + d["date"] + ", commit " + d["commit"])' "$json")
gnuplot <<GP
set terminal pngcairo size 1200,520 font "sans,10" noenhanced
set output "$png"
set title "LoRA layer time ÷ base GEMM alone, same run (lower is better; 1.0 = free LoRA)\n$title"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set yrange [0:*]
set ylabel "× base GEMM time"
set xtics rotate by -35 scale 0
set key top right
set grid ytics
plot "$dat" using 2:xtic(1) title "lorafuse fused layer" lc rgb "#1b7837", \
     "" using 3 title "unfused PEFT sequence" lc rgb "#d6604d", \
     1 with lines lw 2 dt 2 lc rgb "#444444" title "base GEMM alone"
GP
echo "wrote $png"
