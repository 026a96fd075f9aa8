"""Breeder: the one object the driver uses to make, store and load children.

A run whose operators stay in the linear family (``cycleqd`` crossover with
``none`` or ``svd`` mutation) represents every child as a genome (see genome.py);
any other run (``svd_child``/``gaussian`` mutation, or a non-linear mergekit method
such as ``ties`` as crossover) stores weights. The same API hides the difference:
the driver only sees ``Child`` values, ``weights(child)`` and saved paths.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from mergekit.merge_methods import BasePolicy, ParameterScope, get, merge_tensors

from mergekit_cycleqd.errors import (
    GenomeError,
    InvalidParameterError,
    MissingTensorError,
    ShapeMismatchError,
    UnknownParameterError,
)
from mergekit_cycleqd.merge.genome import GENOME_SUFFIX, Genome
from mergekit_cycleqd.merge.materialize import (
    FactorSet,
    GenomeWeights,
    StoredWeights,
    check_finite,
    write_shards,
)
from mergekit_cycleqd.merge.methods import apply_mutation
from mergekit_cycleqd.merge.modelset import ModelSet, SafetensorsModel
from mergekit_cycleqd.merge.mutations import check_mutation, tensor_seed
from mergekit_cycleqd.merge.specs import CrossoverSpec, MutationSpec
from mergekit_cycleqd.merge.svd_cache import SVDCache
from mergekit_cycleqd.merge.weights import WeightSource

_COPIED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "merges.txt",
    "vocab.json",
    "chat_template.jinja",
    "chat_template.json",
)
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass(frozen=True, eq=False)
class GenomeChild:
    """A child stored as its genome (linear runs)."""

    genome: Genome


@dataclass(frozen=True, eq=False)
class WeightsChild:
    """A child stored as weights: an in-memory state dict or a saved folder."""

    weights: StoredWeights
    path: Path | None = None


Child = GenomeChild | WeightsChild


class Breeder:
    """Builds children from parents; hides genome vs. stored-weights children."""

    def __init__(
        self,
        base: Path,
        experts: Sequence[Path],
        crossover: CrossoverSpec,
        mutation: MutationSpec,
        cache_dir: Path,
        device: str | None = None,
    ):
        self.base_path = Path(base).resolve()
        self.expert_paths = [Path(p).resolve() for p in experts]
        self.crossover = crossover
        self.mutation = mutation
        check_mutation(mutation.kind, mutation.rate, mutation.gaussian_std)
        if mutation.rank is not None and mutation.rank < 1:
            raise InvalidParameterError(f"mutation rank must be >= 1 or None; got {mutation.rank}")
        try:
            self._method = get(crossover.method)
        except RuntimeError:
            raise InvalidParameterError(
                f"crossover method {crossover.method!r} is not a registered mergekit merge method"
            ) from None
        self._check_crossover_parameters()
        self.models = ModelSet(self.base_path, self.expert_paths)
        self.cache_dir = Path(cache_dir).resolve()
        self.svd = SVDCache(self.cache_dir, self.models, device)
        self.normalize = bool(crossover.parameters.get("normalize", True))
        self.stores_genomes = crossover.method == "cycleqd" and mutation.stays_in_genome_space
        self._keys: list[str] | None = None
        self._factor_sets: dict[int | None, FactorSet] = {}
        floats = [
            self.models.dtype(n)
            for n in self.models.names
            if self.models.dtype(n).is_floating_point
        ]
        self.dtype = floats[0] if floats else torch.float32

    # -- construction helpers -------------------------------------------------
    def _check_crossover_parameters(self) -> None:
        spec = self._method.spec
        # per-model parameters given here are broadcast to every parent; ``weight`` is omega.
        names = {p.name for p in spec.parameters} - {"weight"}
        reserved = {"mutation", "mutation_rate", "mutation_seed", "gaussian_std", "svd_factors"}
        allowed = names - reserved if self.crossover.method == "cycleqd" else names
        for key in self.crossover.parameters:
            if key not in allowed:
                raise UnknownParameterError(
                    f"crossover parameter {key!r} is not a parameter of merge method "
                    f"{self.crossover.method!r} (allowed: {', '.join(sorted(allowed)) or 'none'})"
                )

    def factor_keys(self) -> list[str]:
        """SVD cache keys of the experts (content hashes; computed once)."""
        if self._keys is None:
            self._keys = [
                self.svd.key(k, self.mutation.rank) for k in range(len(self.expert_paths))
            ]
        return self._keys

    def _factors(self, k: int):
        return self.svd.factors(k, self.mutation.rank)

    def _factor_set(self, rank: int | None) -> FactorSet:
        """Factors at a genome's rank (a loaded genome may use another rank than this run)."""
        found = self._factor_sets.get(rank)
        if found is None:
            found = self._factor_sets[rank] = FactorSet(lambda k: self.svd.factors(k, rank))
        return found

    def _check_task(self, task: int) -> None:
        if not 0 <= task < len(self.expert_paths):
            raise InvalidParameterError(
                f"mutation_task {task} is out of range: there are {len(self.expert_paths)} experts"
            )

    # -- seeds ----------------------------------------------------------------
    def expert(self, k: int) -> Child:
        self._check_task(k)
        if self.stores_genomes:
            return GenomeChild(Genome.unit(k, self.factor_keys(), self.mutation.rank))
        return WeightsChild(StoredWeights(self.models.experts[k]), self.expert_paths[k])

    def base(self) -> Child:
        if self.stores_genomes:
            return GenomeChild(Genome.unit(None, self.factor_keys(), self.mutation.rank))
        return WeightsChild(StoredWeights(self.models.base), self.base_path)

    # -- operators ------------------------------------------------------------
    def breed(
        self,
        parents: Sequence[Child],
        weights: Sequence[float],
        mutation_task: int,
        mutation_seed: int,
        *,
        scale: float = 1.0,
    ) -> Child:
        """Crossover with the given omegas, then mutation towards task ``mutation_task``.

        ``scale`` multiplies the crossover result (every a_k, d_k) before the mutation.
        """
        if not parents or len(parents) != len(weights):
            raise InvalidParameterError(
                f"breed needs one weight per parent; got {len(parents)} parents, {len(weights)} weights"
            )
        self._check_task(mutation_task)
        if scale != 1.0:
            weights = self._scaled(weights, scale)
        if self.stores_genomes and all(isinstance(p, GenomeChild) for p in parents):
            normalize = self.normalize and scale == 1.0
            genome = Genome.weighted_sum([p.genome for p in parents], weights, normalize)
            if self.mutation.kind == "svd":
                genome = genome.mutate_svd(
                    mutation_task, self._factors(mutation_task), self.mutation.rate, mutation_seed
                )
            return GenomeChild(genome)
        parameters = dict(self.crossover.parameters)
        if scale != 1.0:
            parameters["normalize"] = False
        method, kind = self.crossover.method, self.mutation.kind
        return self._merge_weights(
            parents, weights, method, parameters, kind, mutation_task, mutation_seed
        )

    def _scaled(self, weights: Sequence[float], scale: float) -> list[float]:
        """scale * w (normalised first where the crossover normalises): exact linear weights."""
        if self.crossover.method != "cycleqd":
            raise InvalidParameterError(
                f"search.crossover.scale needs the linear `cycleqd` crossover, not "
                f"{self.crossover.method!r}; remove scale or use method: cycleqd"
            )
        total = sum(float(w) for w in weights) if self.normalize else 1.0
        if total == 0:
            raise InvalidParameterError(f"crossover weights {list(weights)} sum to zero")
        return [scale * float(w) / total for w in weights]

    def combine(self, children: Sequence[Child], coefficients: Sequence[float]) -> Child:
        """theta_b + sum_i c_i tau_i: no normalisation, no mutation."""
        if self.stores_genomes and all(isinstance(c, GenomeChild) for c in children):
            return GenomeChild(
                Genome.weighted_sum([c.genome for c in children], coefficients, normalize=False)
            )
        return self._merge_weights(
            children, coefficients, "cycleqd", {"normalize": False}, "none", 0, 0
        )

    def _merge_weights(
        self,
        parents: Sequence[Child],
        weights: Sequence[float],
        method_name: str,
        parameters: dict[str, Any],
        mutation: str,
        task: int,
        seed: int,
    ) -> WeightsChild:
        """Per-tensor mergekit merge of the parents (fp32), then mutation; base-dtype output."""
        method = get(method_name)
        svd_path = str(self._factors(task).path) if mutation == "svd" else ""
        mutation_params = {
            "mutation": mutation,
            "mutation_rate": self.mutation.rate,
            "mutation_seed": seed,
            "gaussian_std": self.gaussian_std,
            "svd_factors": svd_path,
        }
        sources = [self.weights(p) for p in parents]
        ids = [f"parent{i}" for i in range(len(parents))]
        with_base = method.spec.contract.base in (BasePolicy.REQUIRED, BasePolicy.OPTIONAL)
        weight_spec = next((p for p in method.spec.parameters if p.name == "weight"), None)
        params = dict(parameters)
        if method_name == "cycleqd":  # the merge method mutates itself: same code as YAML
            params.update(mutation_params)
        if weight_spec is not None:
            params["weight"] = dict(zip(ids, (float(w) for w in weights), strict=True))
            if with_base and weight_spec.scope == ParameterScope.INPUT:
                params["weight"]["base"] = 0.0
        out: dict[str, torch.Tensor] = {}
        for name in self.models.names:
            base = self.models.base.tensor(name)
            tensors = [source.tensor(name) for source in sources]
            for i, tensor in enumerate(tensors):
                if tuple(tensor.shape) != tuple(base.shape):
                    raise ShapeMismatchError(
                        f"tensor {name!r}: parent {i} has shape {list(tensor.shape)}, "
                        f"base {self.base_path} has {list(base.shape)}"
                    )
            if not base.is_floating_point():
                out[name] = base.clone()
                continue
            inputs = ([base] if with_base else []) + tensors
            input_ids = (["base"] if with_base else []) + ids
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(tensor_seed(seed, name))
                merged = merge_tensors(
                    inputs,
                    method,
                    parameters=params,
                    ids=input_ids,
                    base_index=0 if with_base else None,
                    name=name,
                    dtype=torch.float32,
                )
            if method_name != "cycleqd":
                merged = apply_mutation(
                    name,
                    merged,
                    base.float(),
                    **{
                        "kind": mutation,
                        "rate": self.mutation.rate,
                        "seed": seed,
                        "std": self.gaussian_std,
                        "svd_factors": svd_path,
                    },
                )
            check_finite(merged, name, f"{method_name} crossover")
            out[name] = merged.to(base.dtype)
        return WeightsChild(StoredWeights(out))

    @cached_property
    def gaussian_std(self) -> float:
        """The Gaussian mutation's std: absolute, or relative to the experts' task-vector RMS."""
        if self.mutation.relative_std is None:
            return self.mutation.gaussian_std
        return self.mutation.relative_std * self.models.task_vector_rms()

    # -- access -----------------------------------------------------------------
    def weights(self, child: Child) -> WeightSource:
        if isinstance(child, GenomeChild):
            return GenomeWeights(child.genome, self.models, self._factor_set(child.genome.rank))
        return child.weights

    # -- storage --------------------------------------------------------------
    def save(self, child: Child, path_stem: Path) -> Path:
        """Write ``<stem>.genome.safetensors`` (genomes) or a model folder ``<stem>`` (weights)."""
        path_stem = Path(path_stem)
        if isinstance(child, GenomeChild):
            return child.genome.save(path_stem.with_name(path_stem.name + GENOME_SUFFIX)).resolve()
        return self.materialize(child, path_stem)

    def load(self, path: Path) -> Child:
        path = Path(path).resolve()
        if path.name.endswith(GENOME_SUFFIX):
            genome = Genome.load(path)
            if list(genome.factor_keys) != self.factor_keys_for(genome.rank):
                raise GenomeError(
                    f"genome {path} was bred from other base/expert models (or another "
                    f"expert order) than {self.base_path} + {[str(p) for p in self.expert_paths]}"
                )
            return GenomeChild(genome)
        model = SafetensorsModel(path)
        for name in self.models.names:
            if name not in model.entries:
                raise MissingTensorError(f"tensor {name!r} is missing from stored child {path}")
            if model.entries[name].shape != self.models.shape(name):
                raise ShapeMismatchError(
                    f"tensor {name!r} has shape {list(model.entries[name].shape)} in stored child "
                    f"{path} but {list(self.models.shape(name))} in base {self.base_path}"
                )
        return WeightsChild(StoredWeights(model), path)

    def factor_keys_for(self, rank: int | None) -> list[str]:
        if rank == self.mutation.rank:
            return self.factor_keys()
        return [self.svd.key(k, rank) for k in range(len(self.expert_paths))]

    def mergekit_config(self, child_path: Path) -> dict:
        """A mergekit YAML (as a dict) reproducing ``weights(load(child_path))`` bit for bit."""
        child_path = Path(child_path).resolve()
        if child_path.name.endswith(GENOME_SUFFIX):
            return {
                "merge_method": "cycleqd_genome",
                "base_model": str(self.base_path),
                "models": [{"model": str(p)} for p in self.expert_paths],
                "parameters": {"genome": str(child_path), "svd_cache": str(self.cache_dir)},
                "dtype": "float32",
                "out_dtype": _DTYPE_NAMES.get(self.dtype, "float32"),
            }
        if not child_path.is_dir():
            raise GenomeError(f"{child_path} is neither a genome file nor a saved model folder")
        return {"merge_method": "passthrough", "models": [{"model": str(child_path)}]}

    def materialize(self, child: Child, out_dir: Path) -> Path:
        """A full Hugging Face model folder: base config/tokenizer files + safetensors shards."""
        out_dir = Path(out_dir).resolve()
        if out_dir.exists():
            for stale in (
                *out_dir.glob("*.safetensors"),
                *out_dir.glob("*.safetensors.index.json"),
            ):
                stale.unlink()
        out_dir.mkdir(parents=True, exist_ok=True)
        for file_name in _COPIED_FILES:
            source = self.base_path / file_name
            if source.exists():
                shutil.copyfile(source, out_dir / file_name)
        write_shards(self.weights(child).named_tensors(), out_dir)
        return out_dir

    def close(self) -> None:
        """Release memory maps and cached factors."""
        from mergekit.io.tasks import LoaderCache

        self.models.close()
        self.svd.clear_memory()
        self._factor_sets.clear()
        LoaderCache().flush_all()
