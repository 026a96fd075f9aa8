"""Evaluators from other packages: an installed distribution's entry point, and an import path.

The third-party package is written by the test as a real distribution on disk (a
``dist-info`` folder with ``entry_points.txt``), so discovery goes through
``importlib.metadata`` exactly as after ``pip install``; nothing in the project is patched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mergekit_cycleqd.evaluate import evaluator_class, evaluator_kinds
from mergekit_cycleqd.filing.ledger import Ledger
from tests.probe_recipe import probe_recipe, write_recipe

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A third-party evaluator: the share of the reference expert's task vector in the child."""
import torch
from mergekit_cycleqd.evaluate import Evaluator, EvaluatorOptions, TaskResult
from safetensors.torch import load_file


class ShareOptions(EvaluatorOptions):
    base: str
    reference: str


class ShareOfExpert(Evaluator):
    Options = ShareOptions

    def evaluate(self, backend):
        base = load_file(self.options.base + "/model.safetensors")
        ref = load_file(self.options.reference + "/model.safetensors")
        child = dict(backend.weights.named_tensors())
        num = den = 0.0
        for name, b in base.items():
            d = ref[name].double() - b.double()
            num += float(((child[name].double() - b.double()) * d).sum())
            den += float((d * d).sum())
        share = num / den
        return TaskResult(score=min(1.0, max(0.0, share)), metrics={"share": share},
                          samples=[{"plugin": "cqd_share_plugin", "share": share}])


class FromTheFuture(ShareOfExpert):
    api_version = 99


class NotAnEvaluator:
    pass
'''


@pytest.fixture()
def plugin_site(tmp_path: Path) -> Path:
    """A site folder holding the installed distribution ``cqd-share-plugin``."""
    site = tmp_path / "site"
    (site / "cqd_share_plugin").mkdir(parents=True)
    (site / "cqd_share_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "cqd_share_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cqd-share-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[mergekit_cycleqd.evaluators]\n"
        "share_of_expert = cqd_share_plugin:ShareOfExpert\n"
        "from_the_future = cqd_share_plugin:FromTheFuture\n"
    )
    return site


def test_an_installed_entry_point_is_found_by_kind(plugin_site, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_site))
    assert "share_of_expert" in evaluator_kinds()
    assert evaluator_class("share_of_expert").__name__ == "ShareOfExpert"


def test_import_paths_and_refusals(plugin_site, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_site))
    assert evaluator_class("cqd_share_plugin:ShareOfExpert").__name__ == "ShareOfExpert"
    with pytest.raises(ValueError, match="API version 99; this mergekit-cycleqd supports"):
        evaluator_class("from_the_future")
    with pytest.raises(ValueError, match="is <class 'cqd_share_plugin.NotAnEvaluator'>, not a sub"):
        evaluator_class("cqd_share_plugin:NotAnEvaluator")
    with pytest.raises(ValueError, match="module 'cqd_share_plugin' has no attribute 'Nope'"):
        evaluator_class("cqd_share_plugin:Nope")
    with pytest.raises(
        ValueError, match="cannot import module 'no_such_pkg.mod'.*No module named 'no_such_pkg'"
    ):
        evaluator_class("no_such_pkg.mod:Thing")
    with pytest.raises(ValueError, match="unknown evaluator 'share_of_expret'; did you mean 'sha"):
        evaluator_class("share_of_expret")


def test_a_recipe_runs_with_a_third_party_evaluator(plugin_site, tiny_family, tmp_path):
    """The whole loop in a fresh process that only has the plugin on its path."""
    base, experts = tiny_family
    raw = probe_recipe(base, experts[:2], generations=4)
    for task, expert, kind in zip(
        raw["tasks"], experts[:2], ["share_of_expert", "cqd_share_plugin:ShareOfExpert"]
    ):
        task["evaluator"] = kind
        task["options"] = {"base": str(base), "reference": str(expert)}
    recipe = write_recipe(tmp_path / "plugin.yml", raw)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-m", "mergekit_cycleqd.cli", str(recipe), "--out", str(run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with Ledger(run / "ledger.sqlite") as ledger:
        seeds = {r.name: r.scores for r in ledger.children(role="seed")}
        children = ledger.children(role="child")
    # Each expert holds exactly its own task vector: share 1 on its task (by the plugin's math).
    assert seeds["seed:t0"]["t0"] == pytest.approx(1.0, abs=1e-9)
    assert seeds["seed:t1"]["t1"] == pytest.approx(1.0, abs=1e-9)
    assert len(children) == 4 and all(c.status == "ok" for c in children)
    sample = (run / "samples").rglob("t1.opt.jsonl").__next__().read_text().splitlines()[0]
    assert json.loads(sample)["plugin"] == "cqd_share_plugin"


def test_the_projects_evaluators_come_from_their_own_distributions_entry_points():
    from importlib.metadata import entry_points

    from mergekit_cycleqd.evaluate.base import _REGISTRY

    own = {k: v for k, v in _REGISTRY.items() if v.startswith("cycleqd_evaluators.")}
    assert own == {}, "the core registers no evaluator module of its own"
    declared = {
        ep.name: ep
        for ep in entry_points(group="mergekit_cycleqd.evaluators")
        if ep.dist is not None and ep.dist.name == "mergekit-cycleqd-evaluators"
    }
    assert set(declared) == {
        "lm_eval",
        "mbpp",
        "dbbench",
        "os_interaction",
        "agentbench_server",
        "weight_probe",
        "iou",
    }
    for kind, ep in declared.items():
        assert evaluator_class(kind) is ep.load()
        assert ep.value.startswith("cycleqd_evaluators.")


def test_a_project_kind_without_the_evaluators_installed_gets_the_install_line(monkeypatch):
    import mergekit_cycleqd.evaluate.plugins as plugins

    monkeypatch.setattr(plugins, "entry_point_kinds", lambda: {})
    with pytest.raises(
        ValueError, match=r"mergekit-cycleqd-evaluators.*pip install -e \./evaluators"
    ):
        evaluator_class("mbpp")
    with pytest.raises(ValueError, match="unknown evaluator 'mbpp_x'"):
        evaluator_class("mbpp_x")  # not one of the project's kinds: no install line
