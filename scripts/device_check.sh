#!/usr/bin/env bash
# The GPU benchmark and a short check of the training features, for a lent GPU machine (or DEVICE=cpu
# to try it here). On the device:  bash scripts/device_check.sh   (with .whl carried; results land in
# $OUT or ./device-out). Each step has its own time limit and a failing step does not stop the others,
# so one call brings back everything that works; the benchmark, the issue's figures, comes first.
set -uo pipefail
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
LOG="$OUT/checks.log"
{
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
  nproc
} 2>&1 | tee "$LOG"

# step NAME SECONDS COMMAND...: run with a time limit, log its tail and exit status, never stop the script.
step() {
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "=== $name" >>"$LOG"
  timeout -k 10 "$limit" "$@" >"$RUNS/$name.out" 2>&1
  local rc=$?
  tail -n "${TAIL:-12}" "$RUNS/$name.out" >>"$LOG"
  echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
}

COMPILE=${COMPILE:-true}
# The benchmark's GPU configuration (docs/benchmarks.md); BENCH_CONFIG shrinks it for a trial on a CPU.
BENCH_CONFIG=${BENCH_CONFIG:-"dataset.image_size=256 dataset.n_images=1024 model.depth=5 model.wf=6 trainer.batch_size=32 trainer.num_workers=6"}
BENCH_ARGS=${BENCH_ARGS:-"--steps 50 --warmup 10"}
BENCH=(python3 scripts/benchmark.py dataset=synthetic model=unet $BENCH_CONFIG trainer.device=$DEVICE)

PARTS=${PARTS:-"bench ablation checks"}   # and "models"; one part per device call when all would not fit in 10 minutes

# 1. The benchmark: bf16 + channels-last + compile against the reference loop.
if [[ " $PARTS " == *" bench "* ]]; then
  step bench-gpu-unet 300 "${BENCH[@]}" trainer.precision=bf16 trainer.channels_last=true trainer.compile=$COMPILE \
    $BENCH_ARGS --json "$OUT/bench-gpu-unet.json"
  cp "$RUNS/bench-gpu-unet.out" "$OUT/bench-gpu-unet.txt"
fi

# 1b. What each mean buys on this device: the eager bf16 channels-last run ("eager"), then one mean at a
#     time taken away from it. Tables in checks.log, all figures in one ablation.json.
if [[ " $PARTS " == *" ablation "* ]]; then
  for variant in "eager" "fp32-nchw trainer.precision=32 trainer.channels_last=false" \
                 "bf16-nchw trainer.channels_last=false" "workers0 trainer.num_workers=0" \
                 "no-cudnn-benchmark trainer.cudnn_benchmark=false" "no-pin-memory trainer.pin_memory=false"; do
    set -- $variant
    TAIL=16 step "ablation-$1" 120 "${BENCH[@]}" trainer.precision=bf16 trainer.channels_last=true $BENCH_ARGS \
      --skip-reference --skip-eval "${@:2}" --json "$RUNS/ablation-$1.json"
  done
  python3 - "$RUNS" "$OUT/ablation.json" <<'PY'
import json, pathlib, sys
runs = sorted(pathlib.Path(sys.argv[1]).glob("ablation-*.json"))
json.dump({p.stem.removeprefix("ablation-"): json.loads(p.read_text()) for p in runs}, open(sys.argv[2], "w"), indent=1)
PY
fi

# 1c. The test suite itself, whose runs use trainer.device=auto and so train every recipe, model and
#     loss on CUDA here (8 processes; tests.log); then every other model, compiled, with the strong
#     (affine + elastic + intensity) GPU augmentation.
if [[ " $PARTS " == *" models "* ]]; then
  TAIL=40 step tests 280 python3 -m pytest -q -p no:cacheprovider -n "${TEST_PROCESSES:-8}" --timeout 200 tests
  cp "$RUNS/tests.out" "$OUT/tests.log"
  for model in segnet unet_wrapper mobilenet_unet; do
    TAIL=4 step "model-$model" 180 python3 -m seg.cli.train model=$model trainer.device=$DEVICE trainer.epochs=2 \
      trainer.compile=$COMPILE augmentation=strong dataset.image_size=96 dataset.n_images=128 \
      hydra.run.dir=$RUNS/model-$model
  done
fi

# 2. Training features on the device: auto precision (bf16 on CUDA), channels-last, compile, fused Adam;
#    fp16 with the grad scaler; seg-eval reproducing the stored validation metrics; seg-predict; whether a
#    mid-epoch resume is exact there (default kernels, then trainer.deterministic=true).
if [[ " $PARTS " == *" checks "* ]]; then
step train-bf16 150 python3 -m seg.cli.train trainer.device=$DEVICE trainer.epochs=3 trainer.compile=$COMPILE \
  hydra.run.dir=$RUNS/run-bf16
step train-fp16 60 python3 -m seg.cli.train trainer.device=$DEVICE trainer.epochs=2 trainer.precision=16 \
  hydra.run.dir=$RUNS/run-fp16
TAIL=30 step eval 60 python3 -m seg.cli.evaluate ckpt=$RUNS/run-bf16/checkpoints/best.pt split=val \
  device=$DEVICE out_dir=$RUNS/eval
cat "$RUNS/eval/metrics.json" >>"$LOG" 2>/dev/null
step predict 60 python3 -m seg.cli.predict ckpt=$RUNS/run-bf16/checkpoints/best.pt input=$RUNS/eval/overlays \
  device=$DEVICE tta=true out_dir=$RUNS/pred
step resume 90 python3 scripts/resume_check.py --device $DEVICE
step resume-deterministic 90 python3 scripts/resume_check.py --device $DEVICE --deterministic
fi
echo "device check done ($PARTS)" | tee -a "$LOG"
