#!/usr/bin/env bash
# Encoder throughput on a CUDA GPU at fp16 and bf16, in under 10 minutes.
#
# Run from the repository root on a machine with an NVIDIA GPU, a CUDA build of
# torch and the SciFact corpus (pass its folder as the first argument). It
# prints tokens/s per precision and the fraction of the GPU's dense bf16 peak,
# which it measures on the spot with a large torch.matmul.
set -euo pipefail

SCIFACT="${1:-data/scifact}"
PYTHON="${PYTHON:-python}"
export HF_HUB_OFFLINE=1

"$PYTHON" -m pip install --quiet -e '.[test]'
"$PYTHON" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print(torch.cuda.get_device_name(0), "torch", torch.__version__)
PY

timeout 540 "$PYTHON" benchmarks/encoder_throughput.py \
  --scifact "$SCIFACT" --device cuda --passages 4096 --queries 100 \
  --variants torch:fp32,torch:fp16,torch:bf16 --json "${OUT:-.}/gpu_encoder.json"

"$PYTHON" - <<'PY'
import json, os, time, torch

size = 8192
a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
torch.matmul(a, b)
torch.cuda.synchronize()
start = time.perf_counter()
for _ in range(10):
    torch.matmul(a, b)
torch.cuda.synchronize()
peak = 10 * 2 * size**3 / (time.perf_counter() - start)
results = json.load(open(os.path.join(os.environ.get("OUT", "."), "gpu_encoder.json")))
per_token = results["flops_per_token"]
print(f"measured bf16 matmul peak: {peak / 1e12:.0f} TFLOP/s")
for name, figures in results["throughput"].items():
    rate = figures["tokens_per_s"]
    print(f"{name:32s} {rate:12.0f} tokens/s  {rate * per_token / peak:.3f} of bf16 peak")
PY
