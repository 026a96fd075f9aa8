"""Synthetic segmentation domains that mimic the paper's SAM study, drawn deterministically.

The paper merges Segment Anything experts fine-tuned on camouflaged objects, polyps,
skin lesions and leaf disease. Each domain here keeps what makes its real counterpart
hard: ``camouflage`` hides a shape in the same texture as its background (low contrast),
``polyp`` puts bright round blobs on a reddish wavy tissue, ``lesion`` puts one irregular
dark blob on noisy skin, ``leaf`` asks for the small brown spots on a green leaf (not the
leaf). ``generic`` (the base model's data) is solid shapes on solid backgrounds.
Every image is 3 x S x S floats in [0, 1]; every mask is S x S with 1 = foreground.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Sample = tuple[np.ndarray, np.ndarray]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return ys / size, xs / size


def _ellipse(rng: np.random.Generator, size: int, lo: float, hi: float) -> np.ndarray:
    ys, xs = _grid(size)
    cy, cx = rng.uniform(0.25, 0.75, 2)
    ry, rx = rng.uniform(lo, hi, 2)
    angle = rng.uniform(0, np.pi)
    dy, dx = ys - cy, xs - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _blob(rng: np.random.Generator, size: int, radius: float, wobble: float) -> np.ndarray:
    """An irregular star-shaped blob: a radius that varies with the angle."""
    ys, xs = _grid(size)
    cy, cx = rng.uniform(0.3, 0.7, 2)
    theta = np.arctan2(ys - cy, xs - cx)
    r = np.hypot(ys - cy, xs - cx)
    edge = radius * (
        1
        + sum(
            rng.uniform(-wobble, wobble) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
            for k in range(2, 6)
        )
    )
    return r <= edge


def _texture(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Smooth noise: white noise blurred by averaging shifted copies."""
    noise = rng.normal(0, 1, (size, size)).astype(np.float32)
    smooth = sum(np.roll(np.roll(noise, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    return scale * smooth / 3.0


def _paint(background: np.ndarray, colour: np.ndarray, where: np.ndarray) -> np.ndarray:
    image = background.copy()
    image[:, where] = colour[:, None] if colour.ndim == 1 else colour[:, where]
    return image


def generic(rng: np.random.Generator, size: int) -> Sample:
    background = np.ones((3, size, size), np.float32) * rng.uniform(0, 1, (3, 1, 1))
    mask = _ellipse(rng, size, 0.1, 0.3) if rng.random() < 0.5 else _blob(rng, size, 0.2, 0.1)
    colour = np.clip(background[:, 0, 0] + rng.choice([-1, 1], 3) * rng.uniform(0.4, 0.6, 3), 0, 1)
    return _paint(background, colour, mask), mask


def camouflage(rng: np.random.Generator, size: int) -> Sample:
    base = rng.uniform(0.3, 0.7, (3, 1, 1)).astype(np.float32)
    background = base + _texture(rng, size, 0.15)[None]
    mask = _ellipse(rng, size, 0.12, 0.3)
    inside = base * rng.uniform(0.8, 1.2) + _texture(rng, size, 0.15)[None] + 0.08
    image = np.where(mask[None], inside, background)
    return np.clip(image, 0, 1).astype(np.float32), mask


def polyp(rng: np.random.Generator, size: int) -> Sample:
    ys, xs = _grid(size)
    waves = 0.08 * np.sin(2 * np.pi * (ys * rng.uniform(2, 4) + xs * rng.uniform(1, 3)))
    tissue = np.stack([0.75 + waves, 0.3 + waves, 0.3 + waves]).astype(np.float32)
    mask = np.zeros((size, size), bool)
    for _ in range(rng.integers(1, 3)):
        mask |= _ellipse(rng, size, 0.08, 0.16)
    blob = np.array([0.95, 0.55, 0.5], np.float32)
    image = _paint(tissue + _texture(rng, size, 0.04)[None], blob, mask)
    return np.clip(image, 0, 1).astype(np.float32), mask


def lesion(rng: np.random.Generator, size: int) -> Sample:
    skin = np.array([0.85, 0.65, 0.55], np.float32)[:, None, None] * rng.uniform(0.85, 1.1)
    background = skin + _texture(rng, size, 0.06)[None]
    mask = _blob(rng, size, rng.uniform(0.12, 0.25), 0.25)
    dark = skin[:, 0, 0] * rng.uniform(0.35, 0.6)
    image = _paint(background, dark, mask)
    return np.clip(image, 0, 1).astype(np.float32), mask


def leaf(rng: np.random.Generator, size: int) -> Sample:
    background = np.full((3, size, size), 0.1, np.float32) + _texture(rng, size, 0.03)[None]
    leaf_area = _ellipse(rng, size, 0.25, 0.4)
    image = _paint(background, np.array([0.2, 0.6, 0.2], np.float32), leaf_area)
    ys, xs = _grid(size)
    mask = np.zeros((size, size), bool)
    inside = np.argwhere(leaf_area)
    for _ in range(rng.integers(2, 6)):
        cy, cx = inside[rng.integers(len(inside))] / size
        mask |= (np.hypot(ys - cy, xs - cx) <= rng.uniform(0.03, 0.07)) & leaf_area
    image = _paint(image, np.array([0.45, 0.3, 0.1], np.float32), mask)
    return np.clip(image, 0, 1).astype(np.float32), mask


DOMAINS: dict[str, Callable[[np.random.Generator, int], Sample]] = {
    "generic": generic,
    "camouflage": camouflage,
    "polyp": polyp,
    "lesion": lesion,
    "leaf": leaf,
}
EXPERT_DOMAINS = ("camouflage", "polyp", "lesion", "leaf")


def draw(domain: str, count: int, *, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (N, 3, S, S) and masks (N, S, S) of one domain, reproducibly."""
    rng = np.random.default_rng([seed, sorted(DOMAINS).index(domain)])
    samples = [DOMAINS[domain](rng, size) for _ in range(count)]
    images = np.stack([s[0] for s in samples]).astype(np.float32)
    masks = np.stack([s[1] for s in samples]).astype(np.int64)
    return images, masks
