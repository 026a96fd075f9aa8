"""The Table 1 (baselines) and Table 2 (ablations) recipes, and the relative Gaussian std."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from mergekit_cycleqd.merge.breeder import Breeder
from mergekit_cycleqd.merge.modelset import SafetensorsModel
from mergekit_cycleqd.merge.specs import CrossoverSpec, MutationSpec
from mergekit_cycleqd.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
TABLE_RECIPES = sorted((ROOT / "recipes" / "ablations").glob("*.yml")) + sorted(
    (ROOT / "recipes" / "baselines").glob("*.yml")
)


@pytest.mark.parametrize("path", TABLE_RECIPES, ids=lambda p: p.stem)
def test_table_recipes_differ_from_the_toy_only_in_name_and_search(path) -> None:
    toy = yaml.safe_load((ROOT / "recipes" / "toy.yml").read_text())
    recipe = yaml.safe_load(path.read_text())
    assert recipe["name"] != toy["name"]
    assert recipe["search"]["generations"] == toy["search"]["generations"]
    assert {k: v for k, v in recipe.items() if k not in ("name", "search")} == {
        k: v for k, v in toy.items() if k not in ("name", "search")
    }
    load_recipe(path)  # valid


def test_the_table_recipes_cover_table_1_and_table_2() -> None:
    kinds = {load_recipe(p).search.kind for p in TABLE_RECIPES}
    assert kinds == {"cycleqd", "cma_es", "nsga2", "random"}
    ablations = {
        (r.search.sampling.kind, r.search.mutation.kind) for r in map(load_recipe, TABLE_RECIPES)
    }
    assert {
        ("random", "none"),
        ("random", "gaussian"),
        ("random", "svd"),
        ("elite", "svd"),
    } <= ablations


def test_relative_std_is_a_fraction_of_the_experts_task_vector_rms(tiny_family, tmp_path) -> None:
    base, experts = tiny_family
    base_model = SafetensorsModel(base)
    total, count = 0.0, 0
    for expert in experts:
        model = SafetensorsModel(expert)
        for name in base_model.names:
            tau = model.tensor(name).double() - base_model.tensor(name).double()
            total += float((tau**2).sum())
            count += tau.numel()
    rms = (total / count) ** 0.5
    mutation = MutationSpec(kind="gaussian", relative_std=0.05)
    breeder = Breeder(base, experts, CrossoverSpec(), mutation, cache_dir=tmp_path)
    assert breeder.gaussian_std == pytest.approx(0.05 * rms, rel=1e-12)
    # and it is the std the mutation applies: child - plain crossover ~ N(0, std^2)
    parents = [breeder.expert(0), breeder.expert(1)]
    child = breeder.weights(breeder.breed(parents, [1.0, 1.0], 0, 7))
    plain = breeder.weights(breeder.combine(parents, [0.5, 0.5]))
    noise = torch.cat(
        [
            (child.tensor(n).double() - plain.tensor(n).double()).flatten()
            for n in base_model.names
            if base_model.tensor(n).is_floating_point()
        ]
    )
    assert float(noise.std()) == pytest.approx(0.05 * rms, rel=0.05)
    absolute = Breeder(
        base, experts, CrossoverSpec(), MutationSpec(kind="gaussian"), cache_dir=tmp_path
    )
    assert absolute.gaussian_std == 0.0003
    breeder.close()
    absolute.close()
