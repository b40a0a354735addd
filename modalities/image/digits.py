"""The digits task: scikit-learn's bundled 8x8 handwritten digits, upsampled to 16x16, with a fixed split.

`load_digits` ships inside scikit-learn (1,797 images, values 0..16, no download). Images are
bilinearly upsampled to 16x16 and scaled to [-1, 1] (background -1, ink +1). The split is a seeded
permutation: 20% held out (never trained on by any zoo model); the rest is cut into two disjoint
halves ``"train-a"`` / ``"train-b"`` so the bench's judge never sees the verifier's images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ponder.errors import ConfigError

SIZE = 16  # pixels per side after upsampling
CLASS_NAMES = [str(d) for d in range(10)]
SPLITS = ("train", "train-a", "train-b", "heldout")
SPLIT_SEED = 1234  # fixed: the held-out images never change
HELDOUT_FRAC = 0.2


def _all() -> tuple[torch.Tensor, torch.Tensor]:
    """Every image, upsampled and scaled: ([N, 1, 16, 16] in [-1, 1], labels [N])."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N, 1, 8, 8] in [0, 1]
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)  # [N, 1, 16, 16]
    return x * 2 - 1, torch.tensor(data.target, dtype=torch.long)


def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 1, 16, 16] in [-1, 1] and labels [N] of one split.

    split: "train" (everything not held out), "train-a" / "train-b" (its two disjoint halves) or
    "heldout".
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown digits split {split!r}; allowed: {', '.join(SPLITS)}")
    x, y = _all()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_held = int(len(y) * HELDOUT_FRAC)
    held, train = order[:n_held], order[n_held:]
    half = len(train) // 2
    index = {"heldout": held, "train": train, "train-a": train[:half], "train-b": train[half:]}[split]
    return x[index], y[index]


def augment(x: torch.Tensor, generator: torch.Generator, shift: int = 1, noise: float = 0.1) -> torch.Tensor:
    """Random shifts of up to `shift` pixels and Gaussian pixel noise: [B, 1, H, W] -> same shape.

    Classifiers see these so they stay calibrated on generated (slightly off-manifold) images."""
    b = x.shape[0]
    pad = F.pad(x, (shift,) * 4, value=-1.0)  # [B, 1, H+2s, W+2s]
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    out = torch.stack([pad[i, :, dy[i]:dy[i] + x.shape[2], dx[i]:dx[i] + x.shape[3]] for i in range(b)])
    out = out + noise * torch.randn(out.shape, generator=generator)
    return out.clamp(-1, 1)


def to_pil(x: torch.Tensor) -> list:
    """[B, 1, H, W] in [-1, 1] -> grayscale ("L") PIL images."""
    from PIL import Image

    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()  # [B, H, W]
    return [Image.fromarray(a, "L") for a in arr]
