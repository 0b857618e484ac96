#!/usr/bin/env bash
# devcheck.sh: the one prepared device check of the CUDA backend, run on a
# lent H100/H200 from the repository root, with out/cudacheck built here
# beforehand (CGO_ENABLED=0 go build -o out/cudacheck ./cuda/cmd/cudacheck)
# and carried. It prints what the machine has (GPU, driver, where cuBLAS
# and NVRTC live), then runs cudacheck with a fresh kernel cache, keeping
# the full log in $OUT. It installs and changes nothing on the machine.
set -o pipefail
OUT=${OUT:-/tmp}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -2
# Where the CUDA libraries are, in case the loader's path misses them.
find /usr/local/cuda*/lib64/ /usr/local/cuda*/targets/*/lib/ /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib/ \
  -maxdepth 1 \( -name 'libnvrtc.so.1*' -o -name 'libcublas.so.1*' -o -name 'libcublasLt.so.1*' \) 2>/dev/null | head -12
export XDG_CACHE_HOME=$(mktemp -d)
if [ ! -x out/cudacheck ]; then echo "out/cudacheck missing: build and carry it (see cuda/DEVCHECK.md)"; exit 1; fi
timeout 240 ./out/cudacheck "$@" 2>&1 | tee "$OUT/cudacheck.log"
echo "devcheck exit: $?"
