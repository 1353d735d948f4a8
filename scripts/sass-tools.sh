#!/bin/sh
# cuobjdump and nvdisasm for reading the kernels' SASS on a machine without them (the CUDA toolkit
# here ships nvcc and ptxas only): NVIDIA's wheels from PyPI, unpacked into .sass-tools/.
#
#   scripts/sass-tools.sh                       # fetch once; prints the PATH line to use
#   PATH=$PWD/.sass-tools/nvidia/cu13/bin:$PATH cuobjdump -sass -arch sm_90a build/CMakeFiles/lorafuse_static.dir/src/cuda/lora_hopper.cu.o
#
# The disassembler must know the code's architecture (sm_90a from CUDA 13): wheels of the same
# major version as nvcc. No GPU needed.
set -eu
cd "$(dirname "$0")/.."
dir=.sass-tools
bin=$dir/nvidia/cu13/bin
if [ ! -x "$bin/cuobjdump" ] || [ ! -x "$bin/nvdisasm" ]; then
  rm -rf "$dir" && mkdir -p "$dir/wheels"
  python3 -m pip download --quiet --no-deps --dest "$dir/wheels" "nvidia-cuda-cuobjdump==13.*" "nvidia-cuda-nvdisasm==13.*"
  for w in "$dir"/wheels/*.whl; do python3 -m zipfile -e "$w" "$dir"; done
  chmod +x "$bin"/*
fi
"$bin/cuobjdump" --version | tail -n 1
echo "PATH=$PWD/$bin:\$PATH"
