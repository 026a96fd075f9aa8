"""Publishing to the Hub, driven through the real huggingface_hub client against a
local fake Hub (tests/fake_hub.py): uploaded files, the card read back, retry
after a failed commit, refusal to overwrite foreign repos, and no token leaks."""

from __future__ import annotations

import logging
import socket

import huggingface_hub
import pytest
import yaml

from mergekit_cycleqd.results.model_card import CardInfo, ExpertRef, parse_front_matter, render_card
from mergekit_cycleqd.results.publish import (
    PublishError,
    PublishItem,
    publish_models,
    repo_ids_for,
)
from tests.fake_hub import FakeHubServer, FakeRepo
from tests.tiny_models import make_tiny_llama

SECRET = "hf_TESTtoken0123456789abcdefSECRET"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
YAML = "merge_method: cycleqd\nbase_model: org/base\n"


@pytest.fixture(autouse=True)
def _online(monkeypatch):
    """Other tests may set HF_HUB_OFFLINE; these talk to a local server only."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    first = make_tiny_llama(root / "m1", seed=1)
    (first / "README.md").write_text("mergekit's own card, replaced by ours\n")
    second = make_tiny_llama(root / "m2", seed=2)
    return first, second


def _card(kind="elite", child_id=12, scores=None):
    return CardInfo(
        base_model="org/base",
        experts=[ExpertRef("code", "mbpp", "org/coder"), ExpertRef("db", "db", "org/db-expert")],
        tasks=["mbpp", "db"],
        scores=scores or {"opt": {"mbpp": 0.5, "db": 0.25}, "test": {"mbpp": 0.4, "db": 0.2}},
        kind=kind,
        child_id=child_id,
        generation=7,
        parents=[3, 5],
        active_task="db",
        archive_image=PNG,
        mergekit_yaml=YAML,
    )


def _items(model_dirs, names=("final", "elite-12")):
    return [
        PublishItem(name, path, _card("final" if name == "final" else "elite"))
        for name, path in zip(names, model_dirs, strict=False)
    ]


def _assert_no_secret(capsys, caplog, *texts):
    captured = capsys.readouterr()
    for text in (captured.out, captured.err, caplog.text, *texts):
        assert SECRET not in text


def test_repo_naming():
    assert repo_ids_for("org/run", ["final"]) == ["org/run"]
    assert repo_ids_for("org/run", ["final", "elite-3"]) == ["org/run-final", "org/run-elite-3"]
    with pytest.raises(PublishError, match="ORG/NAME"):
        repo_ids_for("run", ["final"])
    with pytest.raises(PublishError, match="distinct"):
        repo_ids_for("org/run", ["a", "a"])
    with pytest.raises(PublishError, match="cannot be part"):
        repo_ids_for("org/run", ["a b"])


def test_card_front_matter_and_body():
    text = render_card(_card(), "run-elite-12")
    meta = parse_front_matter(text)
    assert meta["base_model"] == ["org/base", "org/coder", "org/db-expert"]
    assert meta["base_model_relation"] == "merge"
    assert meta["library_name"] == "transformers"
    assert meta["tags"] == ["merge", "mergekit", "cycleqd"]
    index = meta["model-index"][0]
    assert index["name"] == "run-elite-12"
    values = {
        (r["dataset"]["type"], r["dataset"]["split"]): r["metrics"][0]["value"]
        for r in index["results"]
    }
    assert values == {
        ("mbpp", "opt"): 0.5,
        ("db", "opt"): 0.25,
        ("mbpp", "test"): 0.4,
        ("db", "test"): 0.2,
    }
    assert "| mbpp | 0.5000 | 0.4000 |" in text
    assert "child #12 of the run" in text and "generation 7" in text and "#3, #5" in text
    assert "![Archives" in text and "(archive.png)" in text
    assert f"```yaml\n{YAML.rstrip()}\n```" in text


def test_dry_run_writes_folders_only(model_dirs, tmp_path, capsys, caplog):
    result = publish_models(
        _items(model_dirs),
        "org/run",
        dry_run=True,
        staging_dir=tmp_path / "stage",
        endpoint="http://127.0.0.1:9",  # never contacted
    )
    assert [(m.name, m.repo_id, m.status) for m in result.models] == [
        ("final", "org/run-final", "dry-run"),
        ("elite-12", "org/run-elite-12", "dry-run"),
    ]
    folder = tmp_path / "stage" / "final"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "README.md",
        "archive.png",
        "config.json",
        "generation_config.json",
        "mergekit_config.yml",
        "model.safetensors",
    ]
    assert (folder / "model.safetensors").read_bytes() == (
        model_dirs[0] / "model.safetensors"
    ).read_bytes()
    assert (folder / "archive.png").read_bytes() == PNG
    meta = parse_front_matter((folder / "README.md").read_text())
    assert meta["model-index"][0]["name"] == "run-final"
    assert "final model" in (folder / "README.md").read_text()


def test_upload_checks_files_card_and_token(model_dirs, tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with FakeHubServer(SECRET) as hub:
        result = publish_models(
            _items(model_dirs[:1], names=("elite-12",)),
            "org/run",
            endpoint=hub.url,
            staging_dir=tmp_path / "stage",
            private=True,
        )
        assert [(m.repo_id, m.status) for m in result.models] == [("org/run", "committed")]
        assert result.models[0].commit_url.startswith(f"{hub.url}/org/run/commit/")
        repo = hub.repos["org/run"]
        assert repo.private is True and len(repo.commits) == 1
        assert sorted(repo.files) == [
            ".gitattributes",
            "README.md",
            "archive.png",
            "config.json",
            "generation_config.json",
            "mergekit_config.yml",
            "model.safetensors",
        ]
        assert repo.files["model.safetensors"] == (model_dirs[0] / "model.safetensors").read_bytes()
        assert repo.files["mergekit_config.yml"].decode() == YAML
        readme = repo.files["README.md"].decode()
        meta = yaml.safe_load(readme.split("---\n")[1])
        assert meta["base_model"] == ["org/base", "org/coder", "org/db-expert"]
        assert meta["base_model_relation"] == "merge"
        assert set(meta["tags"]) >= {"merge", "mergekit", "cycleqd"}
        assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.5
        assert set(hub.auth_headers) == {f"Bearer {SECRET}"}
        print(result.summary())
    _assert_no_secret(capsys, caplog, result.summary())


def test_retry_after_failed_commit_finishes_and_then_skips(model_dirs, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    items = _items(model_dirs)
    with FakeHubServer(SECRET) as hub:
        hub.fail_next_commits = 1
        with pytest.raises(PublishError) as failure:
            publish_models(
                items, "org/run", endpoint=hub.url, token=SECRET, staging_dir=tmp_path / "stage"
            )
        message = str(failure.value)
        assert "'final'" in message and "HTTP 500" in message and "Re-run" in message
        # nothing half-uploaded: the failed model's repo holds only what creation made
        assert sorted(hub.repos["org/run-final"].files) == [".gitattributes"]
        assert "org/run-elite-12" not in hub.repos

        again = publish_models(
            items, "org/run", endpoint=hub.url, token=SECRET, staging_dir=tmp_path / "stage"
        )
        assert [m.status for m in again.models] == ["committed", "committed"]
        assert hub.commits_to("org/run-final") == 1 and hub.commits_to("org/run-elite-12") == 1

        before = len(hub.requests)
        third = publish_models(
            items, "org/run", endpoint=hub.url, token=SECRET, staging_dir=tmp_path / "stage"
        )
        assert [m.status for m in third.models] == ["unchanged", "unchanged"]
        assert hub.commits_to("org/run-final") == 1
        # per model: create (exists already) + model info; no preupload, no commit
        assert hub.requests[before:] == [
            ("POST", "/api/repos/create"),
            ("GET", "/api/models/org/run-final"),
            ("POST", "/api/repos/create"),
            ("GET", "/api/models/org/run-elite-12"),
        ]
    _assert_no_secret(capsys, caplog, message)


def test_republish_replaces_our_content_and_deletes_stale_files(model_dirs, tmp_path):
    with FakeHubServer(SECRET) as hub:
        first = PublishItem("final", model_dirs[0], _card("final"))
        publish_models(
            [first], "org/run", endpoint=hub.url, token=SECRET, staging_dir=tmp_path / "a"
        )
        hub.repos["org/run"].files["old-shard.safetensors"] = b"stale"
        card = _card("final")
        card.archive_image = None
        second = PublishItem("final", model_dirs[1], card)
        result = publish_models(
            [second], "org/run", endpoint=hub.url, token=SECRET, staging_dir=tmp_path / "b"
        )
        assert result.models[0].status == "committed"
        files = hub.repos["org/run"].files
        assert "old-shard.safetensors" not in files and "archive.png" not in files
        assert files["model.safetensors"] == (model_dirs[1] / "model.safetensors").read_bytes()
        assert hub.commits_to("org/run") == 2


def test_refuses_foreign_repository(model_dirs, tmp_path):
    with FakeHubServer(SECRET) as hub:
        hub.repos["org/run"] = FakeRepo(
            files={
                ".gitattributes": b"",
                "README.md": b"---\ntags: [other]\n---\nmine\n",
                "model.safetensors": b"x",
            }
        )
        with pytest.raises(PublishError, match="somebody else's work"):
            publish_models(
                _items(model_dirs[:1]),
                "org/run",
                endpoint=hub.url,
                token=SECRET,
                staging_dir=tmp_path / "stage",
            )
        assert hub.repos["org/run"].commits == []
        assert hub.repos["org/run"].files["README.md"].endswith(b"mine\n")


def test_missing_token(model_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(PublishError, match="no Hugging Face token.*HF_TOKEN"):
        publish_models(
            _items(model_dirs[:1]),
            "org/run",
            endpoint="http://127.0.0.1:9",
            staging_dir=tmp_path / "stage",
        )


def test_rejected_token_message_has_no_secret(model_dirs, tmp_path, capsys, caplog):
    with FakeHubServer("hf_the_right_one") as hub:
        with pytest.raises(PublishError) as failure:
            publish_models(
                _items(model_dirs[:1]),
                "org/run",
                endpoint=hub.url,
                token=SECRET,
                staging_dir=tmp_path / "stage",
            )
    assert "rejected the token (401)" in str(failure.value)
    _assert_no_secret(capsys, caplog, str(failure.value), repr(failure.value))


def test_network_down(model_dirs, tmp_path, capsys, caplog):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(PublishError, match="cannot reach the Hub at http://127.0.0.1"):
        publish_models(
            _items(model_dirs[:1]),
            "org/run",
            endpoint=f"http://127.0.0.1:{port}",
            token=SECRET,
            staging_dir=tmp_path / "stage",
        )
    _assert_no_secret(capsys, caplog)


def test_missing_model_folder(tmp_path):
    item = PublishItem("final", tmp_path / "absent", _card())
    with pytest.raises(PublishError, match="does not exist"):
        publish_models([item], "org/run", dry_run=True, staging_dir=tmp_path / "stage")


# ---- publish_run: picking models from a run folder ----------------------------------


@pytest.fixture()
def run_folder(tmp_path, model_dirs, monkeypatch):
    from tests.test_report import make_run

    run = make_run(tmp_path / "run", children=12)
    (run / "elites").mkdir()
    genome = run / "children" / "7.genome.safetensors"
    genome.parent.mkdir()
    genome.write_bytes(b"genome-bytes")
    (run / "elites" / "7.yml").write_text(
        yaml.safe_dump(
            {
                "merge_method": "cycleqd_genome",
                "base_model": "/m/base",
                "models": [{"model": "/m/code"}, {"model": "/m/db"}, {"model": "/m/os"}],
                "parameters": {"genome": str(genome), "svd_cache": str(run / "cache")},
            },
            sort_keys=False,
        )
    )
    calls = []

    def fake_materialize(run_dir, child_id, out_dir):
        calls.append(child_id)
        out_dir.mkdir(parents=True)
        for f in model_dirs[0].iterdir():
            (out_dir / f.name).write_bytes(f.read_bytes())
        return out_dir

    monkeypatch.setattr("mergekit_cycleqd.results.publish._materialize", fake_materialize)
    # these folders are stand-ins that no YAML rebuilds; the rebuild check is tested on a
    # real run in test_publish_run.py
    monkeypatch.setattr("mergekit_cycleqd.results.publish.verify_rebuild", lambda *_a: None)
    return run, calls


def test_publish_run_archive_top_k_dry_run(run_folder):
    import heapq

    from mergekit_cycleqd.filing.ledger import Ledger
    from mergekit_cycleqd.results.publish import publish_run
    from tests.test_report import archives_by_hand

    run, calls = run_folder
    # the db archive filled by hand from the ledger rows; its two best scores (random
    # floats: no ties), found by a heap rather than a sort
    with Ledger(run / "ledger.sqlite") as ledger:
        seeds = {
            r.id for r in ledger.children(role="seed")
        }  # the experts: never published as merges
    merges = [
        e for e in archives_by_hand(run / "ledger.sqlite")["db"].values() if e[1] not in seeds
    ]
    ranked = [i for _, i in heapq.nlargest(2, merges)]
    with Ledger(run / "ledger.sqlite") as ledger:
        records = [ledger.child(i) for i in ranked]
    assert records[0].scores["db"] > records[1].scores["db"]
    result = publish_run(run, "org/run", {"archive": "db", "top": 2}, dry_run=True)
    assert calls == ranked
    assert [m.repo_id for m in result.models] == [f"org/run-elite-{i}" for i in ranked]
    folder = run / "publish" / "repos" / f"elite-{ranked[0]}"
    meta = parse_front_matter((folder / "README.md").read_text())
    values = {
        (r["dataset"]["type"], r["dataset"]["split"]): r["metrics"][0]["value"]
        for r in meta["model-index"][0]["results"]
    }
    assert values == {(t, "opt"): round(records[0].scores[t], 6) for t in ("code", "db", "os")}
    assert meta["base_model"] == ["org/base", "org/code", "org/db", "org/os"]
    assert (folder / "archive.png").read_bytes().startswith(b"\x89PNG")
    assert str(result).splitlines()[0].startswith(f"elite-{ranked[0]}: dry-run -> ")


def test_publish_run_elite_ships_genome_and_hub_config(run_folder):
    from mergekit_cycleqd.results.publish import publish_run

    run, _ = run_folder
    result = publish_run(run, "org/run", {"elite": 7}, dry_run=True)
    folder = result.models[0].folder
    assert result.models[0].repo_id == "org/run"
    assert (folder / "cycleqd" / "7.genome.safetensors").read_bytes() == b"genome-bytes"
    config = yaml.safe_load((folder / "mergekit_config.yml").read_text())
    assert config == {
        "merge_method": "cycleqd_genome",
        "base_model": "org/base",
        "models": [{"model": "org/code"}, {"model": "org/db"}, {"model": "org/os"}],
        "parameters": {"genome": "cycleqd/7.genome.safetensors", "svd_cache": "svd_cache"},
    }
    assert "`svd_cache`" in (folder / "README.md").read_text()


def test_publish_run_final_to_fake_hub(run_folder, capsys, caplog):
    from mergekit_cycleqd.results.publish import publish_run

    run, calls = run_folder
    with FakeHubServer(SECRET) as hub:
        result = publish_run(run, "org/run", {"final": True}, endpoint=hub.url, token=SECRET)
        assert calls == ["final"] and result.models[0].status == "committed"
        readme = hub.repos["org/run"].files["README.md"].decode()
    assert "final model" in readme and "#4, #5" in readme
    meta = parse_front_matter(readme)
    assert {r["dataset"]["split"] for r in meta["model-index"][0]["results"]} == {"test"}
    _assert_no_secret(capsys, caplog)


def test_publish_run_errors(run_folder, tmp_path):
    from mergekit_cycleqd.filing.ledger import Ledger
    from mergekit_cycleqd.results.publish import publish_run

    run, _ = run_folder
    with pytest.raises(PublishError, match="exactly one"):
        publish_run(run, "org/run", {"final": True, "elite": 3}, dry_run=True)
    with pytest.raises(PublishError, match="no archive 'nope'"):
        publish_run(run, "org/run", {"archive": "nope"}, dry_run=True)
    with pytest.raises(PublishError, match="no model with id 999"):
        publish_run(run, "org/run", {"elite": 999}, dry_run=True)
    with pytest.raises(PublishError, match="not a run folder"):
        publish_run(tmp_path / "empty", "org/run", {"final": True}, dry_run=True)
    with Ledger(run / "ledger.sqlite") as ledger:
        models = ledger.meta()["models"]
        models["experts"][1]["hub_id"] = None
        ledger.set_meta(models=models)
    with pytest.raises(
        PublishError,
        match=r"expert 'db-expert' \(--expert-hub-id db-expert=ID\) of this run has no .*Hub id",
    ):
        publish_run(run, "org/run", {"elite": 7}, dry_run=True)
