#!/usr/bin/env bash
# The benchmarks on CUDA: bf16 autocast and channels_last, as gain.engine.setup_runtime sets them up for
# `device: cuda`, in under 5 minutes (the pipeline is not timed). Without CUDA: prints "no CUDA", exits 0.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]     # OUT_DIR defaults to reports/cuda
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
fi

if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "no CUDA"
    exit 0
fi

out_dir="${1:-reports/cuda}"
"$py" -c 'import torch; print("CUDA:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
exec timeout 290 "$py" -m benchmarks.run --device cuda --skip-pipeline --out-dir "$out_dir"
