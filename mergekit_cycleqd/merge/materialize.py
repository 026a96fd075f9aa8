"""Turn genomes (and stored weights) into tensors: state dicts, resident models, folders.

One kernel, ``genome_tensor``, computes every genome tensor; the in-memory path,
the in-place path and the ``cycleqd_genome`` mergekit method all call it, which is
what makes their outputs bit-identical. It is written as a linear merge
(c0 * theta_b + sum_k a_k theta_k with c0 = 1 - sum_k a_k, fused multiply-adds into one
buffer) plus one GEMM per expert with non-zero SVD coefficients, so a child costs
about one in-memory linear merge when the SVD rank is small.
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from mergekit_cycleqd.errors import MissingTensorError, NonFiniteError, ShapeMismatchError
from mergekit_cycleqd.merge.genome import Genome
from mergekit_cycleqd.merge.modelset import ModelSet, SafetensorsModel
from mergekit_cycleqd.merge.svd_cache import SVDFactors
from mergekit_cycleqd.merge.weights import save_tensors


def check_finite(tensor: torch.Tensor, name: str, where: str) -> None:
    """Raise NonFiniteError if the tensor holds NaN or Inf (one reduction pass)."""
    if tensor.numel() == 0 or not tensor.is_floating_point():
        return
    low, high = torch.aminmax(tensor)
    if not (math.isfinite(low.item()) and math.isfinite(high.item())):
        raise NonFiniteError(f"{where}: tensor {name!r} contains NaN or Inf")


CHUNK_ELEMENTS = 1 << 18  # ~1 MiB of fp32 per row block: the block stays in cache
STACK_MAX_RANK = 256  # concatenate experts' factors into one GEMM up to this total rank


class FactorSet:
    """Experts' SVD factors for materialisation, with per-tensor concatenations memoised.

    With several experts' coefficients non-zero, one GEMM of inner size sum(r_k) is much
    faster than K thin ones; the concatenated U and Vh are built once per tensor and
    expert subset. Every path (in place, state dict, mergekit) uses this class, so all
    choose the same strategy and stay bit-identical.
    """

    def __init__(self, lookup: Callable[[int], SVDFactors | None]):
        self.lookup = lookup
        self._stacks: dict[tuple[str, tuple[int, ...]], tuple[torch.Tensor, torch.Tensor]] = {}
        self._moved: dict[tuple[str, tuple[int, ...], torch.device], list] = {}

    def triple(self, k: int, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        found = self.lookup(k)
        triple = found.get(name) if found is not None else None
        if triple is None:
            raise MissingTensorError(
                f"genome has SVD coefficients for tensor {name!r} of expert {k} "
                "but the SVD cache has no factors for it"
            )
        return triple

    def terms(
        self, name: str, ks: tuple[int, ...], device: torch.device | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(U, Vh)] to multiply with the coefficient rows of experts ``ks`` (concatenated),
        on ``device`` (copied there once per tensor and expert subset, then kept)."""
        terms = self._cpu_terms(name, ks)
        if device is None or all(u.device == device for u, _ in terms):
            return terms
        key = (name, ks, device)
        moved = self._moved.get(key)
        if moved is None:
            moved = self._moved[key] = [(u.to(device), vh.to(device)) for u, vh in terms]
        return moved

    def _cpu_terms(self, name: str, ks: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pairs = [self.triple(k, name) for k in ks]
        if len(ks) == 1 or sum(u.shape[1] for u, _, _ in pairs) > STACK_MAX_RANK:
            return [(u, vh) for u, _, vh in pairs]
        key = (name, ks)
        stack = self._stacks.get(key)
        if stack is None:
            stack = self._stacks[key] = (
                torch.cat([u for u, _, _ in pairs], dim=1),
                torch.cat([vh for _, _, vh in pairs], dim=0),
            )
        return [stack]


def genome_tensor(
    name: str,
    base: torch.Tensor,
    experts: Sequence[torch.Tensor],
    genome: Genome,
    factors: FactorSet,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """theta_b + sum_k a_k tau_k + sum_k U_k diag(d_k) Vh_k for one tensor, in fp32.

    Computed as c0 theta_b + sum_k a_k theta_k (+ the low-rank GEMM) one row block at a
    time, so each block of ``out`` is written once while it is in cache. ``out``, if
    given, must be a contiguous fp32 tensor of the right shape; NaN/Inf raise.
    """
    a = [float(x) for x in genome.a.tolist()]
    c0 = 1.0 - math.fsum(a)
    if out is None:
        out = torch.empty(base.shape, dtype=torch.float32, device=base.device)
    inputs = [(c0, base)] + [(c, e) for c, e in zip(a, experts, strict=True) if c != 0.0]
    lowrank: list[tuple[torch.Tensor, torch.Tensor]] = []
    block = genome.d.get(name)
    if block is not None:
        ks = tuple(k for k in range(block.shape[0]) if bool(block[k].any()))
        if ks:
            for k in ks:
                rank = factors.triple(k, name)[0].shape[1]
                if block.shape[1] != rank:
                    raise ShapeMismatchError(
                        f"genome coefficients for tensor {name!r}, expert {k} have length "
                        f"{block.shape[1]} but the cached SVD has rank {rank}"
                    )
            terms = factors.terms(name, ks, device=out.device)
            rows = torch.stack([block[k] for k in ks]).to(out.device, torch.float32)
            coefficients = rows.reshape(-1) if len(terms) == 1 else None
            for i, (u, vh) in enumerate(terms):
                c = coefficients if coefficients is not None else rows[i]
                lowrank.append((u * c, vh))
    width = out[0].numel() if out.ndim > 0 and out.shape[0] > 0 else 1
    step = max(1, CHUNK_ELEMENTS // max(width, 1)) if out.ndim > 1 else max(out.numel(), 1)
    if out.device.type != "cpu":  # no cache to fit; one pass, one NaN check (one sync)
        step = max(out.shape[0] if out.ndim > 0 else 1, 1)
    length = out.shape[0] if out.ndim > 0 else 1
    for start in range(0, length, step):
        stop = min(start + step, length)
        view = out[start:stop] if out.ndim > 0 else out
        (c, first), *rest = inputs
        torch.mul(_rows(first, start, stop), c, out=view)
        for c, tensor in rest:
            view.add_(_rows(tensor, start, stop).float(), alpha=c)
        for left, right in lowrank:
            view.addmm_(left[start:stop], right)
        check_finite(view, name, "genome materialisation")
    return out


def _rows(tensor: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    return (tensor[start:stop] if tensor.ndim > 0 else tensor).float()


class GenomeWeights:
    """A genome child as a WeightSource: tensors are computed on demand, never stored."""

    def __init__(
        self, genome: Genome, models: ModelSet, factors: Callable[[int], SVDFactors | None]
    ):
        if genome.num_experts != len(models.experts):
            raise ShapeMismatchError(
                f"genome has {genome.num_experts} experts but the model set has {len(models.experts)}"
            )
        self.genome = genome
        self.models = models
        self.factors = factors

    def tensor(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """One tensor in fp32 (or written into ``out``, on its device); non-float tensors
        come from the base."""
        base = self.models.base.tensor(name)
        if not base.is_floating_point():
            return base.clone()
        experts = [expert.tensor(name) for expert in self.models.experts]
        if out is not None and out.device != base.device:
            base, experts = _on_device(self.models, name, out.device, base, experts)
        return genome_tensor(name, base, experts, self.genome, self.factors, out=out)

    def named_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every tensor in the base model's dtype."""
        for name in self.models.names:
            yield name, self.tensor(name).to(self.models.dtype(name))

    def copy_into(self, module: torch.nn.Module) -> None:
        """Write every tensor straight into the module's existing storage.

        Computed on the module's device: fp32 parameters in place (no temporary);
        others (bf16, fp16) through one fp32 scratch buffer per shape, kept with the
        module across children, and a single ``copy_``. On an accelerator the base
        and experts are copied there once and kept (``_on_device``), so a child
        streams device memory only.
        """
        targets = module.state_dict(keep_vars=True)
        scratch = _SCRATCH.setdefault(module, {})
        with torch.no_grad():
            for name in self.models.names:
                target = _target(targets, module, name, self.models.shape(name))
                if not self.models.base.tensor(name).is_floating_point():
                    target.copy_(self.models.base.tensor(name))
                    continue
                if target.dtype == torch.float32 and target.is_contiguous():
                    self.tensor(name, out=target.data)
                    continue
                key = (tuple(target.shape), target.device)
                buffer = scratch.get(key)
                if buffer is None:
                    buffer = scratch[key] = torch.empty(
                        key[0], dtype=torch.float32, device=target.device
                    )
                target.copy_(self.tensor(name, out=buffer))


# fp32 scratch buffers per resident module, (shape, device) -> tensor: reused by every child.
_SCRATCH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# base and expert tensors copied to an accelerator, per model set: (name, device) -> tensors.
_DEVICE_INPUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _on_device(
    models: ModelSet,
    name: str,
    device: torch.device,
    base: torch.Tensor,
    experts: list[torch.Tensor],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``base`` and ``experts`` on ``device``, copied on first use and kept for the next child."""
    kept = _DEVICE_INPUTS.setdefault(models, {})
    found = kept.get((name, device))
    if found is None:
        found = kept[(name, device)] = (base.to(device), [e.to(device) for e in experts])
    return found


def _target(
    targets: dict[str, torch.Tensor], module: torch.nn.Module, name: str, shape: tuple[int, ...]
) -> torch.Tensor:
    target = targets.get(name)
    if target is None:
        raise MissingTensorError(
            f"tensor {name!r} does not exist in the resident model ({type(module).__name__}); "
            "the child was built for another architecture"
        )
    if tuple(target.shape) != tuple(shape):
        raise ShapeMismatchError(
            f"tensor {name!r}: child has shape {list(shape)}, resident model has {list(target.shape)}"
        )
    return target


class StoredWeights:
    """A weights child: a state dict in memory or a saved safetensors folder."""

    def __init__(self, tensors: dict[str, torch.Tensor] | SafetensorsModel):
        self.source = tensors

    def names(self) -> list[str]:
        return self.source.names if isinstance(self.source, SafetensorsModel) else list(self.source)

    def tensor(self, name: str) -> torch.Tensor:
        if isinstance(self.source, SafetensorsModel):
            return self.source.tensor(name)
        found = self.source.get(name)
        if found is None:
            raise MissingTensorError(f"tensor {name!r} is missing from the stored child")
        return found

    def named_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.names():
            yield name, self.tensor(name)

    def copy_into(self, module: torch.nn.Module) -> None:
        targets = module.state_dict(keep_vars=True)
        with torch.no_grad():
            for name in self.names():
                tensor = self.tensor(name)
                _target(targets, module, name, tuple(tensor.shape)).copy_(tensor)


def state_dict(weights: GenomeWeights | StoredWeights) -> dict[str, torch.Tensor]:
    """Materialise any child's weights into a plain state dict (base dtype, owned memory)."""
    if isinstance(weights, StoredWeights):
        return {name: tensor.clone() for name, tensor in weights.named_tensors()}
    return dict(weights.named_tensors())


_SHARD_BYTES = 4 * 1024**3


def write_shards(tensors: Iterator[tuple[str, torch.Tensor]], out_dir: Path) -> None:
    """Write tensors as Hugging Face safetensors shards (with an index above one shard)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > _SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous()
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_tensors(shards[0], str(out_dir / "model.safetensors"), metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        file_name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_tensors(shard, str(out_dir / file_name), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file_name))
    index = {"metadata": {}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
