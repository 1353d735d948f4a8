#!/usr/bin/env bash
# One call on a machine with several GPUs (issue 9): the tensor-parallel tests and `bench --tp` over
# every GPU, then the same bench on one GPU of the same machine as the P = 1 reference; a short
# summary last. NVLink multicast stays off (NCCL_NVLS_ENABLE=0) throughout.
#
# Build here and pack as for scripts/device-check.sh, then run with the pack carried:
#   make build && scripts/device-check.sh --pack
#   run(command="bash scripts/device-tp.sh", carry=[".device"], kind="nvidia-h200-x2")   # or any x2+ kind
# Logs and the JSON land in $OUT. If NCCL's init hangs, rerun with NCCL_P2P_DISABLE=1; if a graph
# capture hangs, with NCCL_GRAPH_REGISTER=0 (both pass through from the environment).
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0
out=${OUT:-/tmp/lf-device-out}
pack=${PACK:-.device}
mkdir -p "$out" /tmp/lf-bin
tar xJf "$pack/bins.tar.xz" -C /tmp/lf-bin lorafuse test_tp
bin=/tmp/lf-bin
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
nvidia-smi topo -m >"$out/topo.txt" 2>&1
summary=("GPUs: $gpus ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1))")

NCCL_DEBUG=WARN timeout 120 "$bin/test_tp" >"$out/test_tp.log" 2>&1
summary+=("$(printf 'test_tp rc=%d  %s' $? "$(tail -n 1 "$out/test_tp.log")")")

date=$(date +%F)
NCCL_DEBUG=INFO NCCL_DEBUG_FILE="$out/nccl-init.%h.%p.log" timeout 240 "$bin/lorafuse" bench --tp \
  --json "$out/cuda-tp-p$gpus-$date.json" >"$out/bench-tp.log" 2>&1
summary+=("bench --tp (P = $gpus) rc=$?")

CUDA_VISIBLE_DEVICES=0 timeout 150 "$bin/lorafuse" bench --tp --json "$out/cuda-tp-p1-same-machine-$date.json" \
  >"$out/bench-tp-p1.log" 2>&1
summary+=("bench --tp (P = 1, GPU 0 of the same machine) rc=$?")

echo "---- bench --tp, P = $gpus (tail) ----"
tail -n 20 "$out/bench-tp.log"
echo "---- summary ----"
printf '%s\n' "${summary[@]}"
