"""Publishing models of a real (probe) run: real materialisation, real client, fake Hub."""

from __future__ import annotations

import huggingface_hub
import pytest
import torch
import yaml
from safetensors.torch import load_file

from mergekit_cycleqd.cli import main
from mergekit_cycleqd.filing.ledger import Ledger
from mergekit_cycleqd.results.model_card import parse_front_matter
from mergekit_cycleqd.results.publish import publish_run
from mergekit_cycleqd.results.run_models import run_breeder
from tests.fake_hub import FakeHubServer
from tests.probe_recipe import probe_recipe, write_recipe

SECRET = "hf_test_token_never_printed_0123456789"


@pytest.fixture
def probe_run(tiny_family, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    raw = probe_recipe(*tiny_family, generations=6)
    raw["base_model"] = {"path": raw["base_model"], "hub_id": "org/base"}
    for k, expert in enumerate(raw["experts"]):
        expert["hub_id"] = f"org/expert-{k}"
    run_dir = tmp_path / "run"
    assert main([str(write_recipe(tmp_path / "r.yml", raw)), "--out", str(run_dir)]) == 0
    return run_dir


def test_publish_real_final_model(probe_run, capsys) -> None:
    with FakeHubServer(SECRET) as hub:
        result = publish_run(probe_run, "org/cqd", {"final": True}, endpoint=hub.url, token=SECRET)
        files = hub.repos["org/cqd"].files
    assert result.models[0].status == "committed"
    card = parse_front_matter(files["README.md"].decode())
    assert card["base_model"] == ["org/base", "org/expert-0", "org/expert-1", "org/expert-2"]
    assert card["base_model_relation"] == "merge"
    assert {"merge", "mergekit", "cycleqd"} <= set(card["tags"])
    # the uploaded weights are the run's final model, materialised for real
    with Ledger(probe_run / "ledger.sqlite") as ledger:
        final = ledger.children(role="final")[-1]
    breeder = run_breeder(probe_run)
    expected = dict(breeder.weights(breeder.load(probe_run / final.model_path)).named_tensors())
    breeder.close()
    uploaded = {}
    for name, blob in files.items():
        if name.endswith(".safetensors") and not name.startswith("cycleqd/"):
            path = probe_run / "blob.safetensors"
            path.write_bytes(blob)
            uploaded.update(load_file(path))
    assert set(uploaded) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(uploaded[name], tensor.to(uploaded[name].dtype)), name
    config = yaml.safe_load(files["mergekit_config.yml"])
    assert [m["model"] for m in config["models"]] == ["org/expert-0", "org/expert-1", "org/expert-2"]
    out, err = capsys.readouterr()
    assert SECRET not in out + err


def test_publish_cli_dry_run_top_k(probe_run, capsys) -> None:
    assert main(["publish", str(probe_run), "--repo-id", "org/cqd", "--archive", "t0", "--top", "2", "--dry-run"]) == 0
    with Ledger(probe_run / "ledger.sqlite") as ledger:
        from mergekit_cycleqd.filing.archive import archives_from_ledger

        top = [  # seeds are the experts themselves: skipped, not published as merges
            e for e in sorted(archives_from_ledger(ledger)["t0"].members(), key=lambda e: -e.quality)
            if ledger.child(e.child_id).role != "seed"
        ][:2]
    repos = sorted(p.name for p in (probe_run / "publish" / "repos").iterdir())
    assert repos == sorted(f"elite-{e.child_id}" for e in top)
    for repo in repos:
        assert (probe_run / "publish" / "repos" / repo / "README.md").exists()
        assert list((probe_run / "publish" / "repos" / repo).glob("*.safetensors"))
    assert main(["publish", str(probe_run), "--repo-id", "org/cqd", "--archive", "nope", "--dry-run"]) == 1
    assert "nope" in capsys.readouterr().err


def test_publish_refuses_a_seed_and_a_repo_id_the_hub_rejects(probe_run, capsys) -> None:
    with Ledger(probe_run / "ledger.sqlite") as ledger:
        seed = ledger.children(role="seed")[0]
    assert main(["publish", str(probe_run), "--repo-id", "org/cqd", "--elite", str(seed.id), "--dry-run"]) == 1
    assert f"model {seed.id} is t0 itself (a seed, not a merge)" in capsys.readouterr().err
    for bad in ("org/a..b", "org/x--y"):
        staged = probe_run / "publish" / "models"
        before = sorted(staged.iterdir()) if staged.exists() else []
        assert main(["publish", str(probe_run), "--repo-id", bad, "--final", "--dry-run"]) == 1
        err = capsys.readouterr().err
        assert f"the Hub would reject the repository id {bad!r}" in err and "re-run" not in err
        assert (sorted(staged.iterdir()) if staged.exists() else []) == before  # nothing staged


def test_publish_refuses_weights_its_yaml_does_not_rebuild(probe_run, monkeypatch, capsys) -> None:
    """Every publish rebuilds the model from the YAML it ships; a mismatch uploads nothing."""
    from safetensors.torch import load_file, save_file

    from mergekit_cycleqd.results import publish
    from mergekit_cycleqd.results.run_models import materialize_child

    def tampered(run_dir, child_id, out_dir):
        folder = materialize_child(run_dir, child_id, out_dir)
        tensors = load_file(folder / "model.safetensors")
        name = sorted(tensors)[0]
        tensors[name] = tensors[name] + 1e-3
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder

    monkeypatch.setattr(publish, "_materialize", tampered)
    assert main(["publish", str(probe_run), "--repo-id", "org/cqd", "--final", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "does not rebuild the weights" in err and "nothing uploaded" in err
    assert not (probe_run / "publish" / "repos").exists() or not any(
        (probe_run / "publish" / "repos").iterdir()
    )
