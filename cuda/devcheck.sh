#!/usr/bin/env bash
# devcheck.sh: the one prepared device run of the CUDA backend (see
# cuda/DEVCHECK.md). Two modes:
#
#   bash cuda/devcheck.sh build        here, without a GPU: builds out/ (git-ignored,
#                                      about 45 MB): the sdbridge, cudacheck and golden
#                                      test binaries (xz) and the golden set minus the
#                                      CPU-only lora_merge cases (tar.xz)
#   bash cuda/devcheck.sh [STEP...]    there, on the lent GPU, with out/ carried: runs
#                                      the steps (default: the group "first")
#
# Steps: info golden cudacheck bench txt2img benchlora demo golden32, or the
# groups first (info golden cudacheck bench) and second (info txt2img
# benchlora demo golden32), one device call each. Each step prints its output,
# keeps it in $OUT/<step>.log and has its own time limit; a step that fails
# or times out does not stop the next. The kernel cache is shared by the
# steps, so NVRTC compiles each kernel once. It installs and changes nothing
# outside a temporary folder.
set -o pipefail
cd "$(dirname "$0")/.." || exit 1

if [ "${1:-}" = build ]; then
  set -e
  export PATH="$PATH:/usr/local/go/bin"
  golden=${SDBRIDGE_GOLDEN_DIR:-../shared/golden}
  rm -rf out && mkdir -p out
  flags=(-trimpath -ldflags=-s\ -w)
  CGO_ENABLED=0 go build "${flags[@]}" -o out/sdbridge ./cmd/sdbridge
  CGO_ENABLED=0 go build "${flags[@]}" -o out/cudacheck ./cuda/cmd/cudacheck
  CGO_ENABLED=0 go test -c "${flags[@]}" -o out/golden.test ./golden
  xz -T2 -f out/sdbridge out/cudacheck out/golden.test
  tar --exclude='golden/cases/lora_merge_*' -cJf out/golden.tar.xz -C "$(dirname "$golden")" "$(basename "$golden")"
  du -ch out/* | tail -1
  exit 0
fi

OUT=${OUT:-/tmp}
work=$(mktemp -d)
export XDG_CACHE_HOME=$work/cache # a fresh kernel cache, shared by the steps
if [ ! -f out/sdbridge.xz ] || [ ! -f out/golden.tar.xz ]; then
  echo "out/ is missing: run 'bash cuda/devcheck.sh build' here and carry out/ (see cuda/DEVCHECK.md)"
  exit 1
fi
for b in sdbridge cudacheck golden.test; do
  xz -dc "out/$b.xz" >"$work/$b" && chmod +x "$work/$b"
done
tar -xJf out/golden.tar.xz -C "$work"
export SDBRIDGE_GOLDEN_DIR=$work/golden
# Every golden case except the CPU-only lora_merge ones (not carried), or
# the comma-separated $SDBRIDGE_GOLDEN_CASES (a rerun of a few).
cases=${SDBRIDGE_GOLDEN_CASES:-}
[ -n "$cases" ] || cases=$(sed -n 's/^ *"\([a-z0-9_]*\)",\{0,1\}$/\1/p' "$work/golden/cases/index.json" | grep -v '^lora_merge_' | paste -sd, -)

# run STEP LIMIT CMD...: one step with its log and time limit.
run() {
  local step=$1 limit=$2
  shift 2
  echo "=== $step (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$step.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $step: exit $rc after $((SECONDS - t0))s"
}

info() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | head -2
  find /usr/local/cuda*/lib64/ /usr/local/cuda*/targets/*/lib/ /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib/ \
    -maxdepth 1 \( -name 'libnvrtc.so.1*' -o -name 'libcublas.so.1*' -o -name 'libcublasLt.so.1*' \) 2>/dev/null | head -12
}

# Two groups, each sized for one device call of at most 600 s (limits 450 s
# and 440 s): "first" answers "is it correct, how fast are the parts",
# "second" the end-to-end figures. The default is the first.
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(first)
expanded=()
for s in "${steps[@]}"; do
  case $s in
  first) expanded+=(info golden cudacheck bench) ;;
  second) expanded+=(info txt2img benchlora demo golden32) ;;
  *) expanded+=("$s") ;;
  esac
done
steps=("${expanded[@]}")
for s in "${steps[@]}"; do
  case $s in
  info) info 2>&1 | tee "$OUT/info.log" ;;
  golden) # the issue's check: every GPU kind within max(tolerance, 1e-2) in f16
    run golden 120 env SDBRIDGE_DEVICE=cuda SDBRIDGE_CUDA_DTYPE=f16 SDBRIDGE_GOLDEN_CASES="$cases" \
      "$work/golden.test" -test.run '^TestGolden$' -test.v -test.count=1 ;;
  bench) # per-part figures with the card, driver and dtype (JSON)
    run bench 180 "$work/sdbridge" bench --device cuda --cuda-dtype f16 --parts unet,vae,clip,controlnet,t5,ella --repeat 5 --json ;;
  cudacheck) # op-by-op GPU vs CPU, timings, IPC
    run cudacheck 150 "$work/cudacheck" ;;
  benchlora) # LoRA swap through the plugin on a patchable SD1.5 pipeline (writes a 2 GB checkpoint first)
    run benchlora 120 "$work/sdbridge" bench --device cuda --cuda-dtype f16 --parts lora-swap --repeat 5 --json ;;
  txt2img) # the issue's end-to-end figure: 20 steps at 512 px with LoRA + ControlNet + ELLA through the
    # plugins on random SD1.5 / ControlNet / FLAN-T5-XL / ELLA weights (writes about 5.5 GB first; write_s apart)
    run txt2img 200 "$work/sdbridge" bench --device cuda --cuda-dtype f16 --parts txt2img --size 512 --steps 20 \
      --cache "$work/models" --json
    cp "$work"/models/txt2img-*/txt2img-cuda0-512.png "$OUT/txt2img.png" 2>/dev/null ;;
  demo) # a whole generation with LoRA + ControlNet + ELLA plugins on the GPU
    run demo 60 "$work/sdbridge" demo --device cuda -o "$OUT/demo.png" ;;
  golden32) # the same cases in f32: each within its own tolerance
    run golden32 60 env SDBRIDGE_DEVICE=cuda SDBRIDGE_CUDA_DTYPE=f32 SDBRIDGE_GOLDEN_CASES="$cases" \
      "$work/golden.test" -test.run '^TestGolden$' -test.v -test.count=1 ;;
  *) echo "unknown step $s (info golden cudacheck bench txt2img benchlora demo golden32, or first, second)" ;;
  esac
done
grep -H '^golden: [0-9]* passed\|^cudacheck: ' "$OUT"/golden*.log "$OUT"/cudacheck.log 2>/dev/null
rm -rf "$work"
echo "devcheck done"
