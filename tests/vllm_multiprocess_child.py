"""Run by tests/test_vllm_backend.py in a fresh interpreter: the engine core in its own
process (``in_process=False``), swaps through a temporary folder. Prints the greedy rows
after each swap as JSON. Usage: python -m tests.vllm_multiprocess_child MODEL...
(the engine starts on the first model and takes each of the others in turn)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file

from mergekit_cycleqd.evaluate.backends import load_backend
from mergekit_cycleqd.merge.weights import StateDictWeights
from tests.vllm_support import CPU_OPTIONS, greedy, require_vllm


def main(models: list[Path], prompts: list[str]) -> list[list[dict]]:
    require_vllm()
    backend = load_backend("vllm", models[0], in_process=False, **CPU_OPTIONS)
    try:
        rows = []
        for model in models[1:]:
            backend.load_child(StateDictWeights(load_file(str(model / "model.safetensors"))))
            rows.append(greedy(backend.llm, prompts))
        return rows
    finally:
        backend.close()


if __name__ == "__main__":
    prompts = json.loads(sys.stdin.read())
    print("ROWS " + json.dumps(main([Path(p) for p in sys.argv[1:]], prompts)))
