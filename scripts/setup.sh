#!/usr/bin/env bash
# Set up this checkout in one step: .venv/, the right torch for this machine, then seg with its test extras.
#   bash scripts/setup.sh && .venv/bin/seg-train
# Rerunning it is cheap and changes nothing: it skips the installs while pyproject.toml and the torch choice are
# the ones it last installed. Settings (environment variables):
#   PYTHON=python3.12            the interpreter for a new .venv (3.10 or newer)
#   SEG_TORCH_SPEC="torch==..."  the torch requirement, instead of the tested torch 2.13.0 picked below
#   SEG_TORCH_INDEX=URL          the index torch comes from, e.g. https://download.pytorch.org/whl/cu126 for one
#                                CUDA build (PyTorch's indexes serve torch's own needs too)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "setup: seg needs Python 3.10 or newer; set PYTHON=python3.x" >&2; exit 1; }
  "${PYTHON:-python3}" -m venv .venv  # Debian/Ubuntu: needs the python3-venv package
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

# Which torch. On Linux PyPI's plain torch wheel is the CUDA build (several GB of nvidia-* packages), right for
# a machine with an NVIDIA driver only. Elsewhere ask for the CPU build by its local label (+cpu): a wheel that
# pip's config already offers (find-links, a mirror) is taken, else PyTorch's CPU index serves it. The label
# never matches PyPI's CUDA wheel, so a CPU machine can fail but never downloads CUDA.
torch_args=""
if command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then
  default="torch==2.13.0"
elif [ "$(uname -s)" = Linux ]; then
  default="torch==2.13.0+cpu"
  # --retries 0 --timeout 10: where that index is blocked, fail in seconds instead of retrying for minutes.
  torch_args="--extra-index-url https://download.pytorch.org/whl/cpu --retries 0 --timeout 10"
else
  default="torch==2.13.0"  # macOS: PyPI's wheel is the CPU (and MPS) build
fi
torch_spec=${SEG_TORCH_SPEC:-$default}
if [ -n "${SEG_TORCH_INDEX:-}" ]; then torch_args="--index-url $SEG_TORCH_INDEX"; fi  # it serves torch's needs too

# The stamp records what was installed, from where: an unchanged checkout and choice skip pip altogether.
stamp="$PWD $torch_spec ${SEG_TORCH_INDEX:-} $(cksum <pyproject.toml)"
if [ -x .venv/bin/seg-train ] && [ "$(cat .venv/.seg-setup 2>/dev/null)" = "$stamp" ]; then
  echo "setup: .venv is up to date ($torch_spec)"
  exit 0
fi

echo "setup: installing $torch_spec into .venv"
pip install --quiet $torch_args "$torch_spec" || {  # $torch_args unquoted: it holds several words
  echo "setup: could not install $torch_spec; choose another with SEG_TORCH_SPEC or SEG_TORCH_INDEX" >&2; exit 1; }
echo "setup: installing seg (editable) with the extras the tests use (test, onnx, optuna, mlflow, slurm)"
pip install --quiet -e ".[test,onnx,optuna,mlflow,slurm]"  # every extra the tests use, so none skips
.venv/bin/python - <<'PY'
import shutil

import torch

cuda = torch.version.cuda
print(f"setup: done: torch {torch.__version__} ({f'CUDA {cuda}' if cuda else 'CPU build'})")
if not cuda and shutil.which("nvidia-smi"):
    print("setup: warning: this machine has an NVIDIA driver but torch is a CPU build; "
          "rerun with SEG_TORCH_INDEX=https://download.pytorch.org/whl/cuXXX")
PY
echo "$stamp" >.venv/.seg-setup
