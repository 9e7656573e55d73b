#!/usr/bin/env bash
# A short GPU check and the GPU benchmark, for a lent GPU machine (or DEVICE=cpu to try it here).
# On the device:  bash scripts/device_check.sh   (with .whl carried; results land in $OUT or ./device-out)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-device-out}   # logs and figures only: the device tool brings back at most 8 files
RUNS=${RUNS:-/tmp/seg-device-runs}
mkdir -p "$OUT" "$RUNS"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 SEG_CACHE_DIR=/tmp/seg-cache
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

COMPILE=${COMPILE:-true}
# The benchmark's GPU configuration (docs/benchmarks.md); BENCH_CONFIG shrinks it for a trial on a CPU.
BENCH_CONFIG=${BENCH_CONFIG:-"dataset.image_size=256 dataset.n_images=1024 model.depth=5 model.wf=6 trainer.batch_size=32 trainer.num_workers=4"}
BENCH_ARGS=${BENCH_ARGS:-"--steps 50 --warmup 10"}

# 1. Training features on the device: auto precision (bf16 on CUDA), channels-last, compile, fused Adam,
#    fp16 with the grad scaler, then seg-eval reproducing the stored validation metrics.
python3 -m seg.cli.train trainer.device=$DEVICE trainer.epochs=3 trainer.compile=$COMPILE hydra.run.dir=$RUNS/run-bf16 \
  2>&1 | tee "$OUT/train-bf16.log" | tail -n 4
python3 -m seg.cli.train trainer.device=$DEVICE trainer.epochs=2 trainer.precision=16 hydra.run.dir=$RUNS/run-fp16 \
  2>&1 | tee "$OUT/train-fp16.log" | tail -n 2
python3 -m seg.cli.evaluate ckpt=$RUNS/run-bf16/checkpoints/best.pt split=val device=$DEVICE out_dir=$RUNS/eval \
  2>&1 | tee "$OUT/eval.log" | tail -n 8
cat "$RUNS/eval/metrics.json" >> "$OUT/eval.log"

# 2. seg-predict on the device, and whether a mid-epoch resume is exact there (default kernels, then
#    trainer.deterministic=true).
{
  python3 -m seg.cli.predict ckpt=$RUNS/run-bf16/checkpoints/best.pt input=$RUNS/eval/overlays device=$DEVICE \
    tta=true out_dir=$RUNS/pred 2>&1 | tail -n 2
  python3 scripts/resume_check.py --device $DEVICE 2>&1 | tail -n 1 || true
  python3 scripts/resume_check.py --device $DEVICE --deterministic 2>&1 | tail -n 1 || true
} 2>&1 | tee "$OUT/checks.log"

# 3. The benchmark with and without torch.compile.
python3 scripts/benchmark.py dataset=synthetic model=unet $BENCH_CONFIG trainer.device=$DEVICE \
  trainer.precision=bf16 trainer.channels_last=true trainer.compile=$COMPILE $BENCH_ARGS \
  --json "$OUT/bench-gpu-unet.json" 2>&1 | tee "$OUT/bench-gpu-unet.txt" | tail -n 25
python3 scripts/benchmark.py dataset=synthetic model=unet $BENCH_CONFIG trainer.device=$DEVICE \
  trainer.precision=bf16 trainer.channels_last=true $BENCH_ARGS --skip-reference \
  --json "$OUT/bench-gpu-unet-nocompile.json" 2>&1 | tee "$OUT/bench-gpu-unet-nocompile.txt" | tail -n 25
