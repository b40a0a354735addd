"""How diverse a set of candidate images is: the image modality's diversity measure.

Rule: the mean root-mean-square pixel distance over all ordered pairs of distinct images, pixels in
[0, 1] (0 = all identical, 1 = black against white everywhere). A search whose verifier score rises
while this collapses towards 0 is likely hacking its verifier (Ma et al. 2025 report the same
failure for noise search). Search never computes it; the SDK asks the modality after a strategy
returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def image_array(image: Any) -> np.ndarray:
    """A PIL image (or array of uint8 pixels) as float pixels in [0, 1]. -> [H, W, C]"""
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr


def pixel_diversity(outputs: Sequence[Any]) -> float | None:
    """The mean pairwise RMS pixel distance of same-sized images `outputs` (pixels in [0, 1]).

    Returns None for fewer than two images (no pair to compare)."""
    if len(outputs) < 2:
        return None
    flat = torch.from_numpy(np.stack([image_array(im).reshape(-1) for im in outputs]))  # [N, D]
    dist = torch.cdist(flat.double(), flat.double()) / flat.shape[1] ** 0.5  # [N, N]
    n = flat.shape[0]
    return float(dist.sum() / (n * (n - 1)))


__all__ = ["image_array", "pixel_diversity"]
