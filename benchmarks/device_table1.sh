#!/usr/bin/env bash
# Table 1 cells on the GPU machine lent through the device tool (README.md, "Benchmarks").
# That machine has torch/torchvision/scikit-learn/rich/typer but no pytorch-msssim, no ../shared data and no
# internet, so the call carries `.whl` (the pytorch-msssim wheel) and one data pack from device_pack.py:
#
#   run(command="bash benchmarks/device_table1.sh cifar 4 --methods ICS,NNwICS,NaiveNN --seeds 0
#                --iterations ICS=1000,NNwICS=1000,NaiveNN=1000 --jobs 12", carry=[".gpupack/cifar", ".whl"],
#       timeout_s=540)
#
# Sizing: the paper preset's network costs ≈ 1.3 GFLOP per 32×32 image (forward + backward), an ICS iteration
# 5 batches of 64 ≈ 0.42 TFLOP, so 10,000 iterations × 150 runs ≈ 630 PFLOP: over 13 min even at the H200's
# bf16 peak, before any launch overhead. A 15-minute device session therefore runs reduced iterations.
#
# GROUP (digits = MNIST + Fashion-MNIST, cifar = CIFAR-10 JPEG copy) picks the datasets; MINUTES stops starting
# new cells after that long (running ones finish). The rest goes to table1.py. Results come back in $OUT:
# table1_raw.csv and rho_sweep_raw.csv (this checkout's raw files plus the new rows), device_run.log and
# device_info.txt. Here, `python benchmarks/table1.py --merge <files_at>/table1_raw.csv` takes the new rows in
# (`--rho-sweep --merge <files_at>/rho_sweep_raw.csv` for a ρ sweep).
set -uo pipefail
group=${1:?usage: device_table1.sh digits|cifar MINUTES [table1.py args]}
minutes=${2:?usage: device_table1.sh digits|cifar MINUTES [table1.py args]}
shift 2
case "$group" in
  digits) datasets=mnist,fashion_mnist ;;
  cifar) datasets=cifar10 ;;
  *) echo "device_table1: GROUP must be digits or cifar, got '$group'" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
OUT=${OUT:?device_table1: \$OUT is not set (the device tool sets it)}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export ICSSCAN_BENCH_CACHE=${ICSSCAN_BENCH_CACHE:-/tmp/icsscan-bench-cache}
data=${DEVICE_DATA:-/tmp/icsscan-data}

if ! "$PY" -c "import pytorch_msssim" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device_table1: could not install the carried wheels in .whl/" >&2; exit 2; }
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  nproc
  "$PY" -c "import torch, torchvision, sklearn, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'torchvision', torchvision.__version__, 'sklearn', sklearn.__version__, 'numpy', numpy.__version__)"
  git rev-parse HEAD 2>/dev/null
} > "$OUT/device_info.txt" 2>&1
cat "$OUT/device_info.txt"

# Rebuild the data root; rc 1 = a decoded array differs from the one the pack was made from (different data).
"$PY" benchmarks/device_pack.py unpack --to "$data" 2>&1 | tee -a "$OUT/device_info.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "device_table1: data unpack failed or differs; not running" >&2; exit 1; }

# Finished cells are skipped (a --rho-sweep run reads and writes rho_sweep_raw.csv; it reuses table1's ρ=10 % cells).
cp benchmarks/results/table1_raw.csv benchmarks/results/rho_sweep_raw.csv "$OUT/"
"$PY" benchmarks/table1.py --datasets "$datasets" --data-root "$data" --results-dir "$OUT" --no-report \
  --threads 1 --stop-after "$minutes" "$@" 2>&1 | tee "$OUT/device_run.log"
