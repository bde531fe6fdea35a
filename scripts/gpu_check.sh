#!/usr/bin/env bash
# The GPU path on a borrowed GPU machine: the GPU tests, then one GReaTer step at the paper's
# settings on a Llama-3-8B-sized model with random weights. Installs nothing (such a machine
# reaches no registry): it needs Python with torch (CUDA), transformers, accelerate and pytest.
# Without vLLM and DSPy the tests that need them are skipped, and the step runs on the
# transformers reasoner and gradient model (the figures say so). About 6-8 minutes on one
# H100 (an estimate: it has not run on a GPU yet); the 8B folder takes 16 GB of disk in $MODEL_DIR.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # figures in OUT_DIR/gpu-check.md (default: build/)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-build}}
mkdir -p "$out"
report="$out/gpu-check.md"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the source tree, not installed
model_dir=${MODEL_DIR:-/tmp/dspy-greater-paper-step-8b}

{
  echo "# GPU check, $(date -u +%F) on $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)"
  echo
  python -c "import torch, transformers; print(f'torch {torch.__version__}, transformers {transformers.__version__}')"
  echo
  echo '## pytest -m gpu'
  echo '```'
} > "$report"
# --noconftest: the suite's fixtures need DSPy and the embedded models; these tests need neither.
timeout 240 python -m pytest -m gpu --noconftest -p no:cacheprovider -q tests/test_gpu.py 2>&1 \
  | tail -15 | tee -a "$report" || true
{
  echo '```'
  echo
  echo '## One step at the paper'"'"'s settings, Llama-3-8B-sized (benchmarks/paper_step.py)'
  echo
} >> "$report"
timeout 420 python benchmarks/paper_step.py --size llama-3-8b --folder "$model_dir" \
  --out "$out/paper_step_8b.json" 2>&1 | grep -v "Writing model shards" | tail -6 | tee -a "$report"
echo "wrote $report"
