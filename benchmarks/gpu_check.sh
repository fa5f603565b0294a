#!/usr/bin/env bash
# The GPU check, in under 5 minutes: VOC at the papers' scale measured on this GPU (`--paper-scale`: the
# GAIN and SEC steps at the papers' batches, the 41 x 41 x 21 training CRFs of the lattice pool and of the
# exact CRF on the GPU, decoding, seed post-processing and the test-time CRF; the full run projected from
# them with `sec.train_crf: auto`'s choice on CUDA, the exact CRF), then the default benchmarks on CUDA
# (--quick: SEC step and CRFs per second of each backend at 14 x 14 and 41 x 41; the pipeline is not timed),
# with nvidia-smi sampling utilisation and memory every 0.5 s throughout. bf16 autocast and channels_last as gain.runtime.device.setup_runtime sets
# them up for CUDA; DataLoader workers as params.yaml's runtime.workers (-1: sized from the cores).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]     # OUT_DIR defaults to reports/cuda
#
# Writes OUT_DIR/benchmarks.json and .md, OUT_DIR/nvidia-smi.csv and OUT_DIR/gpu_check.log.
# Without CUDA: prints "no CUDA" and exits 0.
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
mkdir -p "$out_dir"
log="$out_dir/gpu_check.log"
smi="$out_dir/nvidia-smi.csv"
"$py" -c 'import os, torch; print("CUDA:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| cores", len(os.sched_getaffinity(0)))' | tee "$log"

smi_pid=""
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw \
        --format=csv,nounits -lms 500 >"$smi" 2>/dev/null &
    smi_pid=$!
fi
stop_sampling() {
    if [[ -n "$smi_pid" ]]; then
        kill "$smi_pid" 2>/dev/null || true
        wait "$smi_pid" 2>/dev/null || true
        smi_pid=""
    fi
}
trap stop_sampling EXIT

status=0
timeout 200 "$py" -m benchmarks.run --device cuda --paper-scale --out-dir "$out_dir" 2>&1 | tee -a "$log" || status=$?
timeout 80 "$py" -m benchmarks.run --device cuda --quick --skip-pipeline --out-dir "$out_dir" 2>&1 | tee -a "$log" || status=$?
stop_sampling

if [[ -s "$smi" && -f "$out_dir/benchmarks.md" ]]; then
    # Columns: timestamp, utilization.gpu [%], utilization.memory [%], memory.used [MiB], power.draw [W].
    awk -F', *' 'NR > 1 && $2 ~ /^[0-9.]+$/ { n++; s += $2; if ($2 > m) m = $2; if ($4 > mem) mem = $4 }
        END { if (n) printf "\n## GPU utilisation over the whole check (nvidia-smi, 0.5 s samples)\n\nmean %.0f %%, max %.0f %%, most memory used %.0f MiB, %d samples (nvidia-smi.csv).\n", s / n, m, mem, n }' \
        "$smi" | tee -a "$log" >>"$out_dir/benchmarks.md"
fi
if [[ "$status" != 0 ]]; then
    echo "gpu_check: a benchmark run failed or timed out (exit $status); see $log" >&2
fi
exit "$status"
