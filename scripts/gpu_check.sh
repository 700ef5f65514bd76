#!/usr/bin/env bash
# The GPU check, prepared for a machine with a CUDA GPU (no internet needed): the tests that need CUDA (bf16
# autocast, channels_last, device-resident data, a one-process DDP group on NCCL, torch.compile, the commands on
# the GPU), then the benchmark on CIFAR-shaped generated data at full size (one 50,000-image training epoch,
# 10,000 ID + 6 x 2,000 OOD images scored; training with CUDA graphs and with eager steps), and a summary with the
# epoch time and the full-eval time.
#
#   bash scripts/gpu_check.sh                 # from the repository root; extra arguments go to scripts/bench.py
#   bash scripts/gpu_check.sh --compile       # also measure torch.compile
#   PYTHON=/path/to/python bash scripts/gpu_check.sh
#
# Output: outputs/gpu_check/<date>_<time>/ (pytest.log, bench/bench.csv, summary.txt). Exit status 2 without a GPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
GPU_TESTS=(tests/unit/engine/test_cuda.py tests/cli/test_cuda_cli.py)
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA GPU visible to torch here; nothing to check" >&2
    exit 2
fi
OUT="outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)"
mkdir -p "$OUT"
GPU="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')"
echo "gpu_check: $GPU, torch $("$PY" -c 'import torch; print(torch.__version__)'), $(date '+%Y-%m-%d %H:%M')"

status=0
"$PY" -m pytest -q -o addopts="" -m gpu -rs "${GPU_TESTS[@]}" 2>&1 | tee "$OUT/pytest.log" || status=$?

"$PY" scripts/bench.py --device cuda --cifar --eager-steps-too --out "$OUT/bench" "$@"

"$PY" - "$OUT" "$GPU" "$status" <<'PY' | tee "$OUT/summary.txt"
import csv, sys, time
out, gpu, status = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = list(csv.DictReader(open(f"{out}/bench/bench.csv")))
print(f"gpu_check summary ({time.strftime('%Y-%m-%d')}, {gpu}): GPU tests {'passed' if status == 0 else 'FAILED'}")
for r in rows:
    print(f"  {r['path']:<30} {r['precision']:>5}  epoch of 50,000 images {float(r['epoch_s_cifar10']):7.2f} s   "
          f"full eval (22,000 images) {float(r['full_eval_s']):6.2f} s   train {float(r['train_img_s']):8.0f} img/s   "
          f"eval {float(r['eval_img_s']):8.0f} img/s")
print("targets (H200): epoch <= 1.5 s, full eval <= 0.3 s of model time")
PY
exit "$status"
