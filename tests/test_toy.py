"""The toy family: deterministic, cached, and experts that beat the base on their skill."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from mergekit_cycleqd.toy import SKILLS, ToyConfig, build_toy_assets
from mergekit_cycleqd.toy.scoring import reference_models, score_table

# A few steps only: enough to exercise every stage of the build.
TINY = ToyConfig(
    hidden_size=32, intermediate_size=64, base_steps=12, expert_steps=6, n_opt=4, n_test=6,
    batch_size=16,
)
# Enough training for the skills to show (about 20 s on one core).
SMALL = ToyConfig(base_steps=300, expert_steps=200, n_opt=10, n_test=40)


def model_files(assets) -> dict[str, Path]:
    files = {"base": assets.base / "model.safetensors"}
    files.update({s: p / "model.safetensors" for s, p in assets.experts.items()})
    return files


def test_same_seed_gives_bit_identical_models_and_data(tmp_path):
    first = build_toy_assets(tmp_path / "a", seed=3, config=TINY)
    second = build_toy_assets(tmp_path / "b", seed=3, config=TINY)
    for name, path in model_files(first).items():
        a, b = load_file(str(path)), load_file(str(model_files(second)[name]))
        assert a.keys() == b.keys()
        assert all(a[k].equal(b[k]) for k in a), name
    for path in sorted(first.task_dir.glob("*.jsonl")):
        assert path.read_bytes() == (second.task_dir / path.name).read_bytes()
    other = build_toy_assets(tmp_path / "c", seed=4, config=TINY)
    base_a, base_c = load_file(str(first.base / "model.safetensors")), load_file(
        str(other.base / "model.safetensors")
    )
    assert not all(base_a[k].equal(base_c[k]) for k in base_a)  # the seed matters


def test_assets_layout_and_tasks(tmp_path):
    assets = build_toy_assets(tmp_path / "toy", config=TINY)
    assert list(assets.experts) == list(SKILLS) == ["reverse", "sort", "double"]
    assert assets.tasks == {
        s: {"opt": f"toy_{s}_opt", "test": f"toy_{s}_test"} for s in SKILLS
    }
    assert assets.metric == "exact_match"
    rows = [json.loads(line) for line in (assets.task_dir / "reverse_test.jsonl").open()]
    assert len(rows) == TINY.n_test
    assert all(r["answer"] == r["word"][::-1] and r["prompt"] == f"rev {r['word']}=" for r in rows)
    opt_words = {json.loads(line)["word"] for line in (assets.task_dir / "reverse_opt.jsonl").open()}
    assert len(opt_words) == TINY.n_opt and not opt_words & {r["word"] for r in rows}
    config = yaml.safe_load((assets.task_dir / "toy_sort_opt.yaml").read_text())
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
    assets = build_toy_assets(tmp_path / "toy", config=TINY)
    stamp = (tmp_path / "toy" / "toy.json").read_text()
    files = model_files(assets)
    _stamp_old(files.values())

    again = build_toy_assets(tmp_path / "toy", config=TINY)
    assert again == assets
    assert {k: p.stat().st_mtime_ns for k, p in files.items()} == dict.fromkeys(files, OLD)
    assert (tmp_path / "toy" / "toy.json").read_text() == stamp

    (assets.experts["sort"] / "config.json").unlink()  # a missing piece: rebuild
    build_toy_assets(tmp_path / "toy", config=TINY)
    assert (assets.experts["sort"] / "config.json").is_file()
    assert all(p.stat().st_mtime_ns != OLD for p in files.values())

    _stamp_old(files.values())
    rebuilt = build_toy_assets(tmp_path / "toy", config=TINY, force=True)
    assert json.loads((tmp_path / "toy" / "toy.json").read_text())["config"]["base_steps"] == 12
    assert rebuilt == assets
    assert all(p.stat().st_mtime_ns != OLD for p in files.values())


def test_moved_folder_keeps_working(tmp_path):
    build_toy_assets(tmp_path / "old", config=TINY)
    (tmp_path / "old").rename(tmp_path / "new")
    moved = build_toy_assets(tmp_path / "new", config=TINY)  # no rebuild, paths rewritten
    config = yaml.safe_load((moved.task_dir / "toy_double_test.yaml").read_text())
    assert config["dataset_kwargs"]["data_files"]["test"] == str(moved.task_dir / "double_test.jsonl")


def test_bad_config_is_named():
    with pytest.raises(ValueError, match=r"ToyConfig.skills: unknown \['add'\]"):
        ToyConfig(skills=("reverse", "add"))


@pytest.fixture(scope="module")
def small_scores(tmp_path_factory) -> dict[str, dict[str, float]]:
    """Test-split scores of base, experts and their average, through the lm-eval adapter."""
    assets = build_toy_assets(tmp_path_factory.mktemp("toy_small"), config=SMALL)
    return score_table(assets, reference_models(assets), split="test", device="cpu")


@pytest.mark.slow
def test_each_expert_beats_the_base_and_the_other_experts_on_its_skill(small_scores):
    base = small_scores["base"]
    for skill in SKILLS:
        own = small_scores[f"expert:{skill}"][skill]
        assert own >= base[skill] + 0.4, (skill, own, base[skill])
        others = [small_scores[f"expert:{s}"][skill] for s in SKILLS if s != skill]
        assert own > max(others) + 0.3, (skill, own, others)
    assert max(base.values()) <= 0.3  # the base is weak at every skill
