"""Publishing models of a real (probe) run: real materialisation, real client, fake Hub."""

from __future__ import annotations

import heapq

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
    assert [m["model"] for m in config["models"]] == [
        "org/expert-0",
        "org/expert-1",
        "org/expert-2",
    ]
    out, err = capsys.readouterr()
    assert SECRET not in out + err


def test_publish_cli_dry_run_top_k(probe_run, capsys) -> None:
    assert (
        main(
            [
                "publish",
                str(probe_run),
                "--repo-id",
                "org/cqd",
                "--archive",
                "t0",
                "--top",
                "2",
                "--dry-run",
            ]
        )
        == 0
    )
    from tests.test_report import archives_by_hand

    # t0's archive filled by hand from the ledger rows; its two best merges by a heap, not a
    # sort (seeds are the experts themselves: skipped, never published as merges)
    with Ledger(probe_run / "ledger.sqlite") as ledger:
        seeds = {r.id for r in ledger.children(role="seed")}
    elites = [
        e for e in archives_by_hand(probe_run / "ledger.sqlite")["t0"].values() if e[1] not in seeds
    ]
    top = [child_id for _, child_id in heapq.nlargest(2, elites)]
    repos = {p.name for p in (probe_run / "publish" / "repos").iterdir()}
    assert repos == {f"elite-{child_id}" for child_id in top}
    for repo in repos:
        assert (probe_run / "publish" / "repos" / repo / "README.md").exists()
        assert list((probe_run / "publish" / "repos" / repo).glob("*.safetensors"))
    assert (
        main(["publish", str(probe_run), "--repo-id", "org/cqd", "--archive", "nope", "--dry-run"])
        == 1
    )
    assert "nope" in capsys.readouterr().err


@pytest.fixture(scope="module")
def plain_run(tiny_family, tmp_path_factory):
    """A run planned without the Hub: no hub_id anywhere, local model paths (dry runs only)."""
    raw = probe_recipe(*tiny_family, generations=4)
    tmp_path = tmp_path_factory.mktemp("plain")
    run_dir = tmp_path / "plain"
    assert main([str(write_recipe(tmp_path / "plain.yml", raw)), "--out", str(run_dir)]) == 0
    return run_dir


def _card(result) -> dict:
    return parse_front_matter((result.models[0].folder / "README.md").read_text())


def test_a_run_without_hub_ids_is_published_with_ids_from_the_command_line(plain_run, capsys):
    assert main(["publish", str(plain_run), "--repo-id", "org/x", "--final", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "the base model (--base-hub-id ID), expert 't0' (--expert-hub-id t0=ID)" in err
    assert "--no-hub-ids" in err
    ids = ["--expert-hub-id", "t0=org/e0", "--expert-hub-id", "t1=org/e1"]
    ids += ["--expert-hub-id", "t2=org/e2", "--base-hub-id", "org/b"]
    assert (
        main(["publish", str(plain_run), "--repo-id", "org/x", "--final", "--dry-run", *ids]) == 0
    )
    card = parse_front_matter((plain_run / "publish" / "repos" / "final" / "README.md").read_text())
    assert card["base_model"] == ["org/b", "org/e0", "org/e1", "org/e2"]
    assert (
        main(
            [
                "publish",
                str(plain_run),
                "--repo-id",
                "org/x",
                "--final",
                "--dry-run",
                "--expert-hub-id",
                "t7=org/e7",
                "--no-hub-ids",
            ]
        )
        == 1
    )
    assert "--expert-hub-id: no expert named 't7' in this run" in capsys.readouterr().err


def test_no_hub_ids_writes_a_card_naming_the_models_locally(plain_run) -> None:
    result = publish_run(
        plain_run,
        "org/x",
        {"final": True},
        dry_run=True,
        allow_missing_hub_ids=True,
        expert_hub_ids={"t1": "org/e1"},
    )
    card = parse_front_matter((result.models[0].folder / "README.md").read_text())
    assert card["base_model"] == ["org/e1"]  # only the id that is known
    text = (result.models[0].folder / "README.md").read_text()
    assert "Base model: base (a local model, not on the Hub)" in text
    assert "- t0 (a local model, not on the Hub) — expert for **t0**" in text


def test_hub_ids_declared_by_the_model_folders_are_used(tmp_path) -> None:
    from mergekit_cycleqd.results.hub_ids import _declared_hub_id

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text('{"_name_or_path": "meta-llama/Llama-3-8B"}')
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text('{"_name_or_path": "/home/me/ckpt"}')
    (tmp_path / "b" / "README.md").write_text("---\nmodel_id: org/db-expert\n---\n# db\n")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text("{}")
    assert _declared_hub_id(str(tmp_path / "a")) == "meta-llama/Llama-3-8B"
    assert _declared_hub_id(str(tmp_path / "b")) == "org/db-expert"
    assert _declared_hub_id(str(tmp_path / "c")) is None


def test_final_and_elite_get_their_own_default_repositories(plain_run) -> None:
    with Ledger(plain_run / "ledger.sqlite") as ledger:
        elite = next(r.id for r in ledger.children() if r.status == "ok" and r.role == "child")
    kwargs = {"dry_run": True, "allow_missing_hub_ids": True, "org": "me"}
    final = publish_run(plain_run, None, {"final": True}, **kwargs)
    one = publish_run(plain_run, None, {"elite": elite}, **kwargs)
    assert final.models[0].repo_id == "me/probe-final"
    assert one.models[0].repo_id == f"me/probe-elite-{elite}"


def test_hub_ids_added_to_the_recipe_resume_and_reach_the_card(tiny_family, tmp_path) -> None:
    raw = probe_recipe(*tiny_family, generations=2)
    run_dir = tmp_path / "run"
    assert (
        main([str(write_recipe(tmp_path / "r.yml", raw)), "--out", str(run_dir), "--no-final"]) == 0
    )
    raw["base_model"] = {"path": raw["base_model"], "hub_id": "org/base"}
    for k, expert in enumerate(raw["experts"]):
        expert["hub_id"] = f"org/e{k}"
    again = write_recipe(tmp_path / "r2.yml", raw)
    assert main([str(again), "--out", str(run_dir), "--resume", "--no-final"]) == 0
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        elite = next(r.id for r in ledger.children(role="child") if r.status == "ok")
    result = publish_run(run_dir, "org/x", {"elite": elite}, dry_run=True)
    card = parse_front_matter((result.models[0].folder / "README.md").read_text())
    assert card["base_model"] == ["org/base", "org/e0", "org/e1", "org/e2"]


def test_publish_refuses_a_seed_and_a_repo_id_the_hub_rejects(probe_run, capsys) -> None:
    with Ledger(probe_run / "ledger.sqlite") as ledger:
        seed = ledger.children(role="seed")[0]
    assert (
        main(
            [
                "publish",
                str(probe_run),
                "--repo-id",
                "org/cqd",
                "--elite",
                str(seed.id),
                "--dry-run",
            ]
        )
        == 1
    )
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
