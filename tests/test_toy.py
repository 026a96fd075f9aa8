"""The toy family: deterministic, cached, and experts that beat the base on their skill."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from mergekit_cycleqd.toy import ToyConfig, build_toy_assets
from mergekit_cycleqd.toy.scoring import reference_models, score_table

# A few steps only: enough to exercise every stage of the build. Most tests train the experts
# in this process (processes=0): starting worker processes costs more than these tiny builds.
TINY = ToyConfig(
    hidden_size=64,
    intermediate_size=64,
    base_steps=12,
    expert_steps=6,
    n_opt=4,
    n_val=4,
    n_test=6,
    batch_size=16,
    base_target=None,
)
# The default family (about 70 s of CPU on one core), scored on its validation split.
DEFAULT = ToyConfig()


def model_files(assets) -> dict[str, Path]:
    files = {"base": assets.base / "model.safetensors"}
    files.update({s: p / "model.safetensors" for s, p in assets.experts.items()})
    return files


def test_same_seed_gives_bit_identical_models_and_data(tmp_path):
    first = build_toy_assets(tmp_path / "a", seed=3, config=TINY)
    second = build_toy_assets(tmp_path / "b", seed=3, config=TINY, processes=0)
    for name, path in model_files(first).items():
        a, b = load_file(str(path)), load_file(str(model_files(second)[name]))
        assert a.keys() == b.keys()
        assert all(a[k].equal(b[k]) for k in a), name
    for path in sorted(first.task_dir.glob("*.jsonl")):
        assert path.read_bytes() == (second.task_dir / path.name).read_bytes()
    other = build_toy_assets(tmp_path / "c", seed=4, config=TINY, processes=0)
    base_a, base_c = (
        load_file(str(first.base / "model.safetensors")),
        load_file(str(other.base / "model.safetensors")),
    )
    assert not all(base_a[k].equal(base_c[k]) for k in base_a)  # the seed matters


def test_experts_are_the_same_bits_in_worker_processes_or_in_this_one(tmp_path):
    here = build_toy_assets(tmp_path / "here", seed=5, config=TINY, processes=0)
    workers = build_toy_assets(tmp_path / "workers", seed=5, config=TINY, processes=2)
    for name, path in model_files(here).items():
        a, b = load_file(str(path)), load_file(str(model_files(workers)[name]))
        assert all(a[k].equal(b[k]) for k in a), name


def test_assets_layout_and_tasks(tmp_path):
    assets = build_toy_assets(tmp_path / "toy", config=TINY, processes=0)
    assert list(assets.experts) == list(TINY.skills) == ["shift", "atbash", "rot13"]
    assert assets.tasks == {
        s: {split: f"toy_{s}_{split}" for split in ("opt", "val", "test")} for s in TINY.skills
    }
    assert assets.metric == "exact_match"
    rows = [json.loads(line) for line in (assets.task_dir / "shift_test.jsonl").open()]
    assert len(rows) == TINY.n_test
    next_letter = str.maketrans("abcdefghijklmnopqrstuvwxyz", "bcdefghijklmnopqrstuvwxyza")
    assert all(
        r["answer"] == r["word"].translate(next_letter) and r["prompt"] == f"nxt {r['word']}="
        for r in rows
    )
    words = {
        split: {
            json.loads(line)["word"] for line in (assets.task_dir / f"shift_{split}.jsonl").open()
        }
        for split in ("opt", "val", "test")
    }
    assert len(words["opt"]) == TINY.n_opt and len(words["val"]) == TINY.n_val
    assert not words["opt"] & words["test"] and not words["val"] & words["test"]
    assert not words["opt"] & words["val"]
    config = yaml.safe_load((assets.task_dir / "toy_atbash_opt.yaml").read_text())
    assert config["test_split"] == "opt" and config["output_type"] == "generate_until"
    for path in [assets.base, *assets.experts.values()]:
        assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


# Files are stamped with this modification time before each rebuild decision: a file that
# still carries it afterwards was not rewritten, one that does not was. No clock race: the
# stamp lies decades in the past, whatever the file system's timestamp resolution.
OLD = 1_000_000_000_000_000_000  # 2001-09-09, in ns


def _stamp_old(paths) -> None:
    for path in paths:
        os.utime(path, ns=(OLD, OLD))


def test_cached_build_is_reused_and_rebuilt_only_when_needed(tmp_path):
    assets = build_toy_assets(tmp_path / "toy", config=TINY, processes=0)
    stamp = (tmp_path / "toy" / "toy.json").read_text()
    files = model_files(assets)
    _stamp_old(files.values())

    again = build_toy_assets(tmp_path / "toy", config=TINY, processes=0)
    assert again == assets
    assert {k: p.stat().st_mtime_ns for k, p in files.items()} == dict.fromkeys(files, OLD)
    assert (tmp_path / "toy" / "toy.json").read_text() == stamp

    (assets.experts["atbash"] / "config.json").unlink()  # a missing piece: rebuild
    build_toy_assets(tmp_path / "toy", config=TINY, processes=0)
    assert (assets.experts["atbash"] / "config.json").is_file()
    assert all(p.stat().st_mtime_ns != OLD for p in files.values())

    _stamp_old(files.values())
    rebuilt = build_toy_assets(tmp_path / "toy", config=TINY, processes=0, force=True)
    assert json.loads((tmp_path / "toy" / "toy.json").read_text())["config"]["base_steps"] == 12
    assert rebuilt == assets
    assert all(p.stat().st_mtime_ns != OLD for p in files.values())


def test_moved_folder_keeps_working(tmp_path):
    build_toy_assets(tmp_path / "old", config=TINY, processes=0)
    (tmp_path / "old").rename(tmp_path / "new")
    moved = build_toy_assets(
        tmp_path / "new", config=TINY, processes=0
    )  # no rebuild, paths rewritten
    config = yaml.safe_load((moved.task_dir / "toy_rot13_test.yaml").read_text())
    assert config["dataset_kwargs"]["data_files"]["test"] == str(
        moved.task_dir / "rot13_test.jsonl"
    )


def test_bad_config_is_named():
    with pytest.raises(ValueError, match=r"ToyConfig.skills: unknown \['add'\]"):
        ToyConfig(skills=("shift", "add"))


@pytest.fixture(scope="module")
def val_scores(tmp_path_factory) -> dict[str, dict[str, float]]:
    """Validation-split scores of base, experts and their merges, through the lm-eval adapter."""
    assets = build_toy_assets(tmp_path_factory.mktemp("toy_default"), config=DEFAULT)
    return score_table(assets, reference_models(assets), split="val", device="cpu")


def mean(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # builds the default family (~70 s of CPU) and scores 5 models
def test_the_default_family_is_in_the_papers_regime(val_scores):
    """Experts good but imperfect on their own skill, each the best at it among the experts,
    and the plain merge of their task vectors keeps most of every skill."""
    base = val_scores["base"]
    experts = {s: val_scores[f"expert:{s}"] for s in DEFAULT.skills}
    for skill, scores in experts.items():
        assert 0.55 <= scores[skill] <= 0.92, (skill, scores)
        assert scores[skill] >= base[skill] + 0.1, (skill, scores, base)
        assert scores[skill] > max(experts[s][skill] for s in experts if s != skill)
    best_expert_mean = max(mean(s) for s in experts.values())
    assert mean(val_scores["task_sum"]) > best_expert_mean + 0.05
    assert mean(val_scores["average"]) >= best_expert_mean - 0.03


def test_a_failing_expert_worker_names_its_skills_and_its_error(tmp_path):
    from mergekit_cycleqd.toy.experts import ExpertWorkers

    with ExpertWorkers(tmp_path, 0, TINY, processes=1) as workers:  # no base saved there
        with pytest.raises(
            RuntimeError,
            match=r"(?s)worker for shift, atbash, rot13 failed.*"
            r"model\.safetensors",
        ):
            workers.train(lambda skill: None)
