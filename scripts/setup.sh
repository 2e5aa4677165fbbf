#!/usr/bin/env bash
# Create .venv (if missing) and install lorashare with its test and example extras.
# torch==2.13.0 is installed FIRST: on CPU machines it is a small CPU build, whereas a bare
# "torch" requirement with no torch present pulls the newest multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,examples]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch, peft, share_torch; print('lorashare', share_torch.__version__, '| torch', torch.__version__, '| peft', peft.__version__)"
