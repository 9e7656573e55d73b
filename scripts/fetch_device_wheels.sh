#!/usr/bin/env bash
# Download, on this machine, the wheels that the lent GPU machine lacks (its image has torch,
# tensorboard and scikit-image, but not hydra-core, omegaconf, antlr4, SimpleITK or the onnx extra) into .whl/,
# which .gitignore keeps out of the repository. Then run scripts/device_check.sh there with
# `.whl` carried (see docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
py=(--python-version 3.12 --implementation cp --only-binary=:all: --no-deps -d .whl)
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download "${py[@]}" "${plat[@]}" hydra-core==1.3.2 omegaconf==2.3.0 SimpleITK
# The onnx extra the tests use (seg-export, seg-predict ckpt=model.onnx), with what it needs.
python3 -m pip download "${py[@]}" "${plat[@]}" onnx onnxruntime onnxscript onnx_ir ml_dtypes flatbuffers
# antlr4-python3-runtime 4.9.3 ships as an sdist only: build its (pure-Python) wheel here.
python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -1 .whl
