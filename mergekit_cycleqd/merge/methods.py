"""The ``cycleqd`` and ``cycleqd_genome`` mergekit merge methods.

``cycleqd``: CycleQD crossover theta_b + sum_i w_i tau_i / sum_i w_i (or without the
division when ``normalize: false``) on every tensor, then the chosen mutation.
``cycleqd_genome``: materialises a genome file from the base, the experts (in the
genome's order) and the SVD cache, with the same kernel as the in-memory paths.

Both are group kernels (one call per output tensor) because the tensor name
seeds the mutation's private generator and selects the SVD factors.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from mergekit.merge_methods import (
    BasePolicy,
    InputContract,
    PerNonBase,
    TensorGroup,
    merge_method,
    register,
    registered_methods,
)

from mergekit_cycleqd.errors import GenomeError, InvalidParameterError
from mergekit_cycleqd.merge.genome import Genome
from mergekit_cycleqd.merge.materialize import FactorSet, check_finite, genome_tensor
from mergekit_cycleqd.merge.mutations import check_mutation
from mergekit_cycleqd.merge.svd_cache import SVDFactors, factor_key, model_fingerprint

PAPER_URL = "https://arxiv.org/abs/2410.14735"
_CONTRACT = InputContract(base=BasePolicy.REQUIRED, min_non_base=1)


class _FileMemo:
    """A small LRU of loaded files keyed by (path, mtime), so each is read once per process."""

    def __init__(self, loader, size: int = 8):
        self.loader, self.size = loader, size
        self.items: OrderedDict[tuple[str, int], object] = OrderedDict()

    def get(self, path: str):
        resolved = Path(path).resolve()
        if not resolved.exists():
            return self.loader(resolved)  # the loader raises its own clear error
        key = (str(resolved), resolved.stat().st_mtime_ns)
        if key not in self.items:
            self.items[key] = self.loader(resolved)
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        self.items.move_to_end(key)
        return self.items[key]


_FACTORS = _FileMemo(SVDFactors.load, size=8)
_FACTOR_SETS: dict[tuple[str, tuple[str, ...]], FactorSet] = {}
_GENOMES = _FileMemo(Genome.load, size=16)
_VERIFIED: set[tuple] = set()


def crossover_tensor(
    base: torch.Tensor,
    parents: list[torch.Tensor],
    weights: list[float],
    normalize: bool,
    name: str,
) -> torch.Tensor:
    """theta_b + (sum_i w_i (theta_i - theta_b)) [/ sum_i w_i], accumulated in input order."""
    acc = None
    for tensor, w in zip(parents, weights, strict=True):
        term = (tensor - base) * w
        acc = term if acc is None else acc + term
    if normalize:
        total = sum(weights)
        if total == 0:
            raise InvalidParameterError(
                f"cycleqd: weights {weights} sum to zero for tensor {name!r}; "
                "use normalize: false or non-zero weights"
            )
        acc = acc / total
    return base + acc


def apply_mutation(
    name: str,
    tensor: torch.Tensor,
    base: torch.Tensor,
    *,
    kind: str,
    rate: float,
    seed: int,
    std: float,
    svd_factors: str,
) -> torch.Tensor:
    """Apply the mutation operator registered as ``kind`` (see ``merge.mutations``)."""
    operator = check_mutation(kind, rate, std)
    if operator.needs_factors and not svd_factors:
        raise InvalidParameterError(
            f"cycleqd: mutation {kind!r} needs parameter svd_factors "
            "(the SVD cache file of the active task's expert)"
        )

    def factors():
        return _FACTORS.get(svd_factors).get(name)

    return operator.apply(name, tensor, base=base, factors=factors, rate=rate, std=std, seed=seed)


@merge_method(name="cycleqd", pretty_name="CycleQD", reference_url=PAPER_URL, contract=_CONTRACT)
def cycleqd_merge(
    group: TensorGroup,
    weight: PerNonBase[float] = 1.0,
    normalize: bool = True,
    mutation: str = "none",
    mutation_rate: float = 0.1,
    mutation_seed: int = 0,
    gaussian_std: float = 0.0003,
    svd_factors: str = "",
) -> torch.Tensor:
    name = group.metadata.name or ""
    base_dtype = group.base.tensor.dtype
    base = group.base.tensor.float()
    parents = group.non_base
    weights = [float(w) for w in weight.values_for(parents)]
    result = crossover_tensor(base, [p.tensor.float() for p in parents], weights, normalize, name)
    result = apply_mutation(
        name,
        result,
        base,
        kind=mutation,
        rate=mutation_rate,
        seed=mutation_seed,
        std=gaussian_std,
        svd_factors=svd_factors,
    )
    check_finite(result, name, "cycleqd merge")
    return result.to(base_dtype)


def _verify_experts(group: TensorGroup, genome: Genome, genome_path: str, svd_cache: str) -> None:
    """Check, once per genome and input list, that the inputs are the genome's experts."""
    experts = group.non_base
    if len(experts) != genome.num_experts:
        raise GenomeError(
            f"genome {genome_path} was bred from {genome.num_experts} experts but the "
            f"merge lists {len(experts)} non-base models"
        )
    ids = tuple(str(entry.id) for entry in group.entries)
    memo = (genome_path, ids)
    if memo in _VERIFIED:
        return
    paths = [getattr(getattr(entry.id, "model", None), "path", None) for entry in group.entries]
    if all(p is not None and Path(p).is_dir() for p in paths):
        from mergekit_cycleqd.merge.modelset import SafetensorsModel

        cache = Path(svd_cache) if svd_cache else None
        base_path = group.base.id.model.path
        base_fp = model_fingerprint(SafetensorsModel(base_path), cache)
        for k, entry in enumerate(experts):
            expert_fp = model_fingerprint(SafetensorsModel(entry.id.model.path), cache)
            if factor_key(base_fp, expert_fp, genome.rank) != genome.factor_keys[k]:
                raise GenomeError(
                    f"model {entry.id.model.path} (non-base input {k}) is not expert {k} of "
                    f"genome {genome_path} with base {base_path}: list the experts in the "
                    "genome's order and use the base it was bred from"
                )
    _VERIFIED.add(memo)


def _rebuild_factors(group: TensorGroup, expert: int, rank: int | None, cache_dir: Path) -> None:
    """Recompute a missing SVD factor file from the merge's own inputs.

    A genome shipped without its cache (e.g. published to the Hub) then still
    rebuilds; the file name is the content hash, so _verify_experts has already
    established that these inputs are the genome's base and experts.
    """
    paths = [_local_folder(entry) for entry in group.entries]
    if any(p is None for p in paths):
        return  # in-memory inputs: SVDFactors.load reports the missing file
    from mergekit_cycleqd.merge.modelset import ModelSet
    from mergekit_cycleqd.merge.svd_cache import SVDCache

    base_index = next(i for i, e in enumerate(group.entries) if e.is_base)
    experts = [p for i, p in enumerate(paths) if i != base_index]
    SVDCache(cache_dir, ModelSet(paths[base_index], experts)).factors(expert, rank)


def _local_folder(entry) -> Path | None:
    """The local folder of a merge input: its path, or its Hub snapshot (already
    downloaded by mergekit to read the tensors); None for in-memory inputs."""
    model = getattr(entry.id, "model", None)
    path = getattr(model, "path", None)
    if path is None:
        return None
    if Path(path).is_dir():
        return Path(path)
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                path, revision=getattr(model, "revision", None), local_files_only=True
            )
        )
    except Exception:  # not a Hub id, or not in the local cache
        return None


@merge_method(
    name="cycleqd_genome",
    pretty_name="CycleQD genome",
    reference_url=PAPER_URL,
    contract=_CONTRACT,
)
def cycleqd_genome_merge(group: TensorGroup, genome: str = "", svd_cache: str = "") -> torch.Tensor:
    """Without ``genome`` the result is the base (the empty genome: every coefficient 0).

    That keeps mergekit's generic contract (any registered method merges with default
    parameters); configs that forget the genome are refused by ``validate_config``.
    """
    name = group.metadata.name or ""
    if not genome:
        return group.base.tensor.clone()
    loaded: Genome = _GENOMES.get(genome)
    _verify_experts(group, loaded, genome, svd_cache)
    base = group.base.tensor

    def lookup(k: int) -> SVDFactors:
        if not svd_cache:
            raise GenomeError(
                f"genome {genome} has SVD coefficients for tensor {name!r}: "
                "set parameter svd_cache to the SVD cache folder"
            )
        path = Path(svd_cache) / f"svd-{loaded.factor_keys[k]}.safetensors"
        if not path.exists():
            _rebuild_factors(group, k, loaded.rank, Path(svd_cache))
        return _FACTORS.get(str(path))

    memo = (svd_cache, loaded.factor_keys)
    if memo not in _FACTOR_SETS:
        _FACTOR_SETS.clear()  # one run at a time; keeps memory bounded
        _FACTOR_SETS[memo] = FactorSet(lookup)
    factors = _FACTOR_SETS[memo]
    factors.lookup = lookup  # error messages name the current tensor
    experts = [entry.tensor for entry in group.non_base]
    result = genome_tensor(name, base, experts, loaded, factors)
    return result.to(base.dtype)


METHODS = (cycleqd_merge, cycleqd_genome_merge)


def register_methods() -> None:
    """Register the plugin's methods into mergekit's registry, skipping names already present."""
    present = {method.spec.name for method in registered_methods()}
    for method in METHODS:
        if method.spec.name not in present:
            register(method)
