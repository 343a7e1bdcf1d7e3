#!/usr/bin/env bash
# GPU check for the v4lab kernels: bf16 correctness on the GPU, sm_90 AOT, and the benchmark.
#
# For a CUDA machine that already has torch, Triton and pytest but no network.
#   usage: scripts/gpu_check.sh [OUT_DIR]        (default: $OUT, else ./gpu_check_out)
# Writes (at most 6 files, one folder level):
#   env.txt       GPU, driver, Python/torch/Triton versions
#   install.txt   output of the editable install
#   tests.txt     pytest output of tests/test_kernels.py (bf16 on CUDA) + tests/test_kernels_aot.py
#   bench.txt     benchmark log;  kernels.json / kernels.md  benchmark results
# Budget: under 8 minutes in total (install ~0.5 min, tests <= 4 min, benchmark <= 3 min).
# Knobs: GPU_CHECK_DTYPES (default bfloat16; e.g. bfloat16,float16,float32),
#        GPU_CHECK_BENCH_ARGS (extra arguments for the benchmark, e.g. "--max-context 128k").
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python}"
status=0

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  else
    echo "nvidia-smi: not found"
  fi
  "$PY" - <<'EOF' 2>&1
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton import failed:", e)
print("cuda available:", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
} > "$OUT_DIR/env.txt"
cat "$OUT_DIR/env.txt"

# 1) install the package (kernels/ becomes v4lab.kernels); fall back to a path shim
if "$PY" -m pip install --no-deps --no-build-isolation -e . > "$OUT_DIR/install.txt" 2>&1; then
  echo "installed v4lab (editable)"
else
  echo "pip install failed (see install.txt); using a PYTHONPATH shim" | tee -a "$OUT_DIR/install.txt"
  SHIM="$(mktemp -d)"
  cp -r v4lab "$SHIM/v4lab"
  rm -rf "$SHIM/v4lab/kernels"
  ln -s "$PWD/kernels" "$SHIM/v4lab/kernels"
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
fi

# 2) kernel tests on the GPU in bf16, plus the sm_90 ahead-of-time compile tests
export V4LAB_KERNEL_DEVICE=cuda
export V4LAB_KERNEL_DTYPES="${GPU_CHECK_DTYPES:-bfloat16}"
unset TRITON_INTERPRET
echo "running kernel tests on CUDA (${V4LAB_KERNEL_DTYPES})"
timeout 240 "$PY" -m pytest tests/test_kernels.py tests/test_kernels_aot.py -q -p no:cacheprovider \
  -rfEs --durations=10 > "$OUT_DIR/tests.txt" 2>&1
rc=$?
tail -n 25 "$OUT_DIR/tests.txt"
if [ $rc -ne 0 ]; then echo "kernel tests: FAILED (rc=$rc)"; status=1; else echo "kernel tests: passed"; fi

# 3) benchmark at Flash sizes (decode 8K..1M, prefill 8K..128K, 1024-query prefill chunks)
echo "running the kernel benchmark"
# shellcheck disable=SC2086
timeout 180 "$PY" -m v4lab.bench_kernels --device cuda --repeats 5 --out "$OUT_DIR" \
  ${GPU_CHECK_BENCH_ARGS:-} > "$OUT_DIR/bench.txt" 2>&1
rc=$?
tail -n 60 "$OUT_DIR/bench.txt"
if [ $rc -ne 0 ]; then echo "benchmark: FAILED (rc=$rc)"; status=1; else echo "benchmark: done"; fi
[ -f "$OUT_DIR/kernels.md" ] && cat "$OUT_DIR/kernels.md"

echo "results in $OUT_DIR"
exit $status
