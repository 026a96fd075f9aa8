"""recipes/toy.yml with the vLLM backend, end to end, against the transformers backend.

Greedy scoring on the same prompts must give the same scores on both backends; the
search is seeded and decides only from scores, so both runs then breed the very same
children, and the two ledgers must agree row by row. The toy here has head_dim 64
(vLLM's CPU attention rejects 16).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergekit_cycleqd.cli import main
from mergekit_cycleqd.filing.ledger import Ledger
from tests.vllm_support import CPU_OPTIONS, require_vllm, toy_recipe_on, vllm_toy_config

TOY = Path(__file__).resolve().parents[1] / "recipes" / "toy.yml"
GENERATIONS = 4


def _rows(run_dir: Path) -> list[tuple]:
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        return [
            (c.generation, c.role, c.name, c.parents, c.weights, c.scores)
            for c in ledger.children(role=None)
        ]


def _answers(run_dir: Path) -> dict[tuple, str]:
    """(sample file, doc id) -> the model's answer, from the run's lm-eval samples."""
    answers = {}
    for path in sorted((run_dir / "samples").rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            answers[(str(path.relative_to(run_dir)), row["doc_id"])] = row["response"]
    return answers


@pytest.mark.slow
def test_toy_search_on_vllm_scores_like_transformers(tmp_path):
    require_vllm()
    from mergekit_cycleqd.toy import ToyConfig, build_toy_assets

    config = vllm_toy_config(ToyConfig)
    assets = build_toy_assets(tmp_path / "toy", config=config)
    vllm_options = dict(CPU_OPTIONS, max_model_len=config.max_positions)
    runs = {}
    for backend in [
        {"kind": "vllm", "options": vllm_options},
        {"kind": "transformers", "options": {"device": "cpu", "batch_size": 64}},
    ]:
        run_dir = tmp_path / f"run-{backend['kind']}"
        recipe = toy_recipe_on(
            assets, backend, generations=GENERATIONS, path=tmp_path / f"toy-{backend['kind']}.yml"
        )
        assert main([str(recipe), "--out", str(run_dir)]) == 0
        runs[backend["kind"]] = _rows(run_dir)

    on_vllm, on_transformers = runs["vllm"], runs["transformers"]
    assert len(on_vllm) >= 3 + GENERATIONS
    assert [r[1] for r in on_vllm].count("child") == GENERATIONS
    assert on_vllm == on_transformers
    scores = [v for row in on_vllm for v in row[-1].values()]
    assert any(0 < v for v in scores)

    # stronger than the scores: every greedy answer of every model, word for word
    answers = {kind: _answers(tmp_path / f"run-{kind}") for kind in runs}
    assert len(answers["vllm"]) == 3 * (3 + GENERATIONS) * config.n_opt
    assert len(set(answers["vllm"].values())) > config.n_opt  # varied, non-empty answers
    assert answers["vllm"] == answers["transformers"]
