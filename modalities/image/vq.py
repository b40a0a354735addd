"""A learned codebook of digit patches: images <-> grids of discrete tokens, for AR image models.

Vector quantisation by k-means (Lloyd's algorithm, scikit-learn's `KMeans`) over the non-overlapping
``patch x patch`` pixel blocks of the digits task's images (`ponder.modalities.image.digits`: 16x16,
pixels in [-1, 1]). Encoding maps every block to its nearest code (Euclidean distance); decoding
pastes each code's block back, so an image is a raster-order grid of ``(image_size / patch)^2``
tokens (64 for 16x16 images in 2x2 blocks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ponder.errors import InputError, ModelLoadError

CODEBOOK_FILE = "codebook.safetensors"


@dataclass
class PatchCodebook:
    """K codes of ``patch x patch`` pixels; images of ``image_size`` are grids of their indices."""

    codes: torch.Tensor  # [K, patch * patch], pixel values in [-1, 1]
    patch: int = 2
    image_size: int = 16

    @property
    def num_codes(self) -> int:
        return self.codes.shape[0]

    @property
    def grid(self) -> int:
        """Tokens per image row (and rows per image)."""
        return self.image_size // self.patch

    @property
    def tokens_per_image(self) -> int:
        return self.grid * self.grid

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, S, S] -> raster-order blocks [N, G*G, patch*patch]."""
        if images.dim() != 3 or tuple(images.shape[1:]) != (self.image_size, self.image_size):
            raise InputError(f"images must be [N, {self.image_size}, {self.image_size}], got {tuple(images.shape)}")
        blocks = F.unfold(images[:, None].float(), kernel_size=self.patch, stride=self.patch)  # [N, p*p, G*G]
        return blocks.transpose(1, 2)  # [N, G*G, p*p]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, S, S] in [-1, 1] -> token ids [N, G*G] (nearest code per block)."""
        blocks = self.patches(images)  # [N, G*G, p*p]
        dist = torch.cdist(blocks, self.codes[None].expand(len(blocks), -1, -1))  # [N, G*G, K]
        return dist.argmin(-1)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """token ids [N, G*G] -> images [N, S, S] in [-1, 1]."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() != 2 or ids.shape[1] != self.tokens_per_image:
            raise InputError(f"token ids must be [N, {self.tokens_per_image}], got {tuple(ids.shape)}")
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= self.num_codes):
            raise InputError(f"token ids must be codes in [0, {self.num_codes}), "
                             f"got {int(ids.min())}..{int(ids.max())}")
        blocks = self.codes[ids].transpose(1, 2)  # [N, p*p, G*G]
        out = F.fold(blocks, output_size=(self.image_size, self.image_size), kernel_size=self.patch,
                     stride=self.patch)  # [N, 1, S, S]
        return out[:, 0]

    def background(self) -> int:
        """The code nearest an all-background block (-1 everywhere: what empty image regions are made of)."""
        return int((self.codes + 1).norm(dim=1).argmin())

    # ---- files ---------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({"codes": self.codes.contiguous()}, str(Path(folder) / CODEBOOK_FILE),
                  metadata={"patch": str(self.patch), "image_size": str(self.image_size)})

    @classmethod
    def load(cls, folder: Path) -> PatchCodebook:
        from safetensors import safe_open

        path = Path(folder) / CODEBOOK_FILE
        if not path.is_file():
            raise ModelLoadError(f"{str(folder)!r} has no {CODEBOOK_FILE} (the patch codebook of an AR image model)")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            codes = f.get_tensor("codes").float()
        return cls(codes, patch=int(meta.get("patch", 2)), image_size=int(meta.get("image_size", 16)))


def fit_codebook(images: torch.Tensor, num_codes: int = 64, patch: int = 2, seed: int = 0) -> PatchCodebook:
    """k-means over every ``patch x patch`` block of `images` [N, S, S] in [-1, 1]; codes clipped to [-1, 1]."""
    from sklearn.cluster import KMeans

    book = PatchCodebook(torch.zeros(1, patch * patch), patch=patch, image_size=images.shape[-1])
    blocks = book.patches(images).reshape(-1, patch * patch).numpy()  # [N*G*G, p*p]
    km = KMeans(n_clusters=num_codes, n_init=2, random_state=seed).fit(blocks)
    book.codes = torch.tensor(km.cluster_centers_, dtype=torch.float32).clamp(-1, 1)
    return book


__all__ = ["CODEBOOK_FILE", "PatchCodebook", "fit_codebook"]
