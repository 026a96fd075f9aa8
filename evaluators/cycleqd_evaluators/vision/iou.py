"""``iou``: mean foreground IoU of a semantic-segmentation model on held-out images.

Data: an ``.npz`` file with ``images`` (N, 3, H, W floats) and ``masks`` (N, H, W ints,
1 = foreground). The model (``backend.model``, any transformers segmentation class
whose output has ``logits`` of shape (N, classes, h, w)) is run in batches; logits are
upsampled to the mask size and the argmax is compared with the mask. Per image,
IoU = |pred ∩ true| / |pred ∪ true| (1 when both are empty); the score is the mean.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from mergekit_cycleqd.evaluate import Evaluator, EvaluatorOptions, ModelBackend, TaskResult


class IoUOptions(EvaluatorOptions):
    data: str = Field(description="an .npz file with 'images' (N,3,H,W) and 'masks' (N,H,W)")
    foreground: int = Field(1, description="the class index scored")
    batch_size: int = Field(64, ge=1)
    limit: int | None = Field(None, ge=1, description="score only the first N images")


def iou_per_image(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks (N, H, W), 1.0 where both are empty."""
    inter = (predicted & truth).flatten(1).sum(1).double()
    union = (predicted | truth).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


class IoUEvaluator(Evaluator):
    Options = IoUOptions
    options: IoUOptions

    @cached_property
    def _data(self) -> tuple[torch.Tensor, torch.Tensor]:
        path = Path(self.options.data)
        if not path.is_file():
            raise ValueError(f"iou: options.data: no such file {str(path)!r}")
        with np.load(path) as arrays:
            missing = {"images", "masks"} - set(arrays.files)
            if missing:
                raise ValueError(f"iou: {path} lacks arrays {sorted(missing)} (has {arrays.files})")
            images, masks = arrays["images"], arrays["masks"]
        if images.ndim != 4 or masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(
                f"iou: {path}: images must be (N,C,H,W) and masks (N,H,W); got "
                f"{images.shape} and {masks.shape}"
            )
        limit = self.options.limit or len(images)
        return torch.from_numpy(images[:limit]).float(), torch.from_numpy(masks[:limit])

    def evaluate(self, backend: ModelBackend) -> TaskResult:
        model = getattr(backend, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise ValueError(
                "iou needs a resident torch model: use backend kind 'transformers' with "
                "options.model_class set to the model's segmentation class"
            )
        images, masks = self._data
        device = next(model.parameters()).device
        scores = []
        with torch.no_grad():
            for start in range(0, len(images), self.options.batch_size):
                batch = images[start : start + self.options.batch_size].to(device)
                logits = model(pixel_values=batch).logits
                logits = torch.nn.functional.interpolate(
                    logits, size=batch.shape[-2:], mode="bilinear", align_corners=False
                )
                predicted = logits.argmax(1).cpu() == self.options.foreground
                truth = masks[start : start + len(batch)] == self.options.foreground
                scores.append(iou_per_image(predicted, truth))
        per_image = torch.cat(scores)
        score = float(per_image.mean())
        samples = [{"index": i, "iou": float(v)} for i, v in enumerate(per_image)]
        return TaskResult(score=score, metrics={"mean_iou": score}, samples=samples)
