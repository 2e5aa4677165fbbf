#!/usr/bin/env bash
# Create benchmarks/peers/.venv: a separate environment holding the tools lorashare is compared with,
# lorashare==0.1.3 (the previous release, on PyPI) and vlora-dev==1.0.0, so that neither can shadow the
# lorashare of this checkout. torch==2.13.0 is installed FIRST, as in scripts/setup.sh: on CPU machines it
# is the small CPU build, whereas letting a peer's bare "torch" requirement pick one pulls a multi-GB CUDA
# build. safetensors, psutil are what the drivers in this folder use.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip 2>&1 | grep -v "is ignored" || true
"${PIP[@]}" "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
"${PIP[@]}" "lorashare==0.1.3" "vlora-dev==1.0.0" safetensors 2>&1 | grep -v "is ignored" || true
.venv/bin/python - <<'PY'
import importlib.metadata as md
import torch
print("peers venv: torch", torch.__version__, "| lorashare", md.version("lorashare"), "| vlora-dev", md.version("vlora-dev"))
PY
