"""Verifiers for images: a class classifier, CLIP similarity, and a feature-statistics score.

Ma et al. 2025 ("Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps") search
noises against such verifiers: a classifier's confidence in the prompted class, CLIP text-image
similarity, and an aesthetic score. Every verifier has ``score(prompt, outputs) -> Tensor[N]``
(higher is better) over PIL images; anything else is an InputError.

* `ClassifierVerifier` — P(prompt's class | image) under any transformers ``*ForImageClassification``
  folder (``zoo:digits-classifier``); the prompt names a class of ``config.id2label`` or its index.
* `ClipVerifier` — cosine similarity of CLIP's text embedding of the prompt and its image embedding,
  from a local ``CLIPModel`` folder (with its processor files).
* `FeatureStatsVerifier` (``aesthetic``) — no weights: RMS contrast plus mean absolute gradient of the
  luma (see its docstring); a crude "crisp, high-contrast strokes" preference, easy to hack on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ponder.errors import ConfigError, InputError, ModelLoadError

SCORES = ("prob", "logprob", "logit")


def _check_images(name: str, outputs: Sequence[Any]) -> list:
    from PIL import Image

    for out in outputs:
        if not isinstance(out, Image.Image):
            raise InputError(f"the {name} verifier scores images, got a {type(out).__name__}")
    return list(outputs)


def folder_architecture(folder: Path) -> str:
    """The first ``architectures`` entry of a transformers folder's config.json ('' if none)."""
    config = folder / "config.json"
    if not config.is_file():
        return ""
    try:
        return (json.loads(config.read_text()).get("architectures") or [""])[0]
    except json.JSONDecodeError:
        return ""


class ClassifierVerifier:
    """Confidence of an image classifier in the prompt's class.

    score = softmax(logits)[class] ("prob", default), its log ("logprob"), or the raw logit ("logit").
    """

    def __init__(self, model, processor, *, name: str = "classifier", score: str = "prob"):
        if score not in SCORES:
            raise ConfigError(f"unknown classifier score {score!r}; allowed: {', '.join(SCORES)}")
        # frozen: noise optimisation differentiates through the classifier, never into it
        self.model, self.processor, self.name, self.kind = model.eval().requires_grad_(False), processor, name, score
        id2label = model.config.id2label
        self.labels = [str(id2label[i]) for i in range(len(id2label))]
        self.mode = "L" if getattr(model.config, "num_channels", 3) == 1 else "RGB"

    @classmethod
    def from_folder(cls, folder: str | Path, *, name: str | None = None, score: str = "prob") -> ClassifierVerifier:
        """Load a ``*ForImageClassification`` model and its image processor (local, safetensors)."""
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        folder = Path(folder)
        if not (folder / "preprocessor_config.json").is_file():
            raise ModelLoadError(f"classifier folder {str(folder)!r} has no preprocessor_config.json "
                                 "(save the image processor with the model)")
        try:
            model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True,
                                                                    use_safetensors=True, dtype=torch.float32)
            processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot load an image classifier from {str(folder)!r}: {err}") from None
        return cls(model, processor, name=name or folder.name, score=score)

    def class_index(self, prompt: Any) -> int:
        """The classifier's class for a prompt: a label (case-insensitive) or an index."""
        text = str(prompt).strip()
        lowered = [lab.lower() for lab in self.labels]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        if text.isdigit() and int(text) < len(self.labels):
            return int(text)
        raise InputError(f"prompt {prompt!r} is not a class of the {self.name} verifier; classes: "
                         f"{', '.join(self.labels[:20])}")

    def logits(self, images: Sequence[Any]) -> torch.Tensor:
        """Class logits of images. -> [N, classes]"""
        pixels = self.processor(images=[im.convert(self.mode) for im in images], return_tensors="pt")
        with torch.no_grad():
            return self.model(**pixels).logits.float()

    def score(self, prompt: Any, outputs: Sequence[Any]) -> torch.Tensor:
        images = _check_images(self.name, outputs)
        label = self.class_index(prompt)
        if not images:
            return torch.zeros(0)
        return self._pick(self.logits(images), label)  # [N]

    def _pick(self, logits: torch.Tensor, label: int) -> torch.Tensor:
        if self.kind == "logit":
            return logits[:, label]
        logp = logits.log_softmax(-1)[:, label]  # [N]
        return logp if self.kind == "logprob" else logp.exp()

    def pixel_values(self, x: torch.Tensor) -> torch.Tensor:
        """What the image processor makes of images, as a differentiable function of pixel tensors.

        x: [N, C, H, W] in [-1, 1] (a denoiser's `decode_tensor`). The processor's rescale to [0, 1],
        grey -> RGB (or RGB -> grey, ITU-R 601), bilinear resize and mean / std normalisation, without
        the uint8 rounding of the PIL path. -> [N, C', h, w]
        """
        import torch.nn.functional as F

        proc = self.processor
        x = x.float() / 2 + 0.5  # [N, C, H, W] in [0, 1]
        channels = 1 if self.mode == "L" else 3
        if x.shape[1] != channels:
            if channels == 3:
                x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
            else:
                x = (x[:, :3] * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        size = getattr(proc, "size", None) or {}
        height, width = size.get("height"), size.get("width")
        if getattr(proc, "do_resize", False) and height and width and tuple(x.shape[-2:]) != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        if getattr(proc, "do_normalize", False):
            mean = torch.tensor(proc.image_mean[:channels]).view(1, channels, 1, 1)
            std = torch.tensor(proc.image_std[:channels]).view(1, channels, 1, 1)
            x = (x - mean) / std
        return x

    def score_tensor(self, prompt: Any, x: torch.Tensor) -> torch.Tensor:
        """The same score as `score`, differentiable in the pixel tensor x [N, C, H, W] in [-1, 1]. -> [N]"""
        label = self.class_index(prompt)
        logits = self.model(pixel_values=self.pixel_values(x)).logits.float()  # [N, K]
        return self._pick(logits, label)


class ClipVerifier:
    """Cosine similarity between CLIP's embedding of the prompt text and of each image (in [-1, 1])."""

    def __init__(self, model, processor, *, name: str = "clip"):
        self.model, self.processor, self.name = model.eval(), processor, name

    @classmethod
    def from_folder(cls, folder: str | Path, *, name: str | None = None) -> ClipVerifier:
        """Load a ``CLIPModel`` and its ``CLIPProcessor`` (tokenizer + image processor) from a local folder."""
        from transformers import CLIPModel, CLIPProcessor

        folder = Path(folder)
        try:
            model = CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                              dtype=torch.float32)
            processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, TypeError) as err:
            raise ModelLoadError(f"cannot load CLIP (model + processor) from {str(folder)!r}: {err}") from None
        return cls(model, processor, name=name or "clip")

    def score(self, prompt: Any, outputs: Sequence[Any]) -> torch.Tensor:
        images = _check_images(self.name, outputs)
        if not images:
            return torch.zeros(0)
        text = self.processor(text=[str(prompt)], return_tensors="pt", padding=True)
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        with torch.no_grad():
            t = self.model.get_text_features(**text)  # [1, D]
            v = self.model.get_image_features(**pixels)  # [N, D]
        t = getattr(t, "pooler_output", t)
        v = getattr(v, "pooler_output", v)
        return torch.nn.functional.cosine_similarity(v.float(), t.float(), dim=-1)  # [N]


class FeatureStatsVerifier:
    """``aesthetic``: image statistics, no weights.

    With luma L in [0, 1] (ITU-R 601 grey of the image), score = std(L) + (mean|dL/dx| + mean|dL/dy|) / 2:
    RMS contrast plus mean absolute gradient (a sharpness / stroke-edge term). Flat grey scores 0;
    crisp black-and-white strokes score high. It ignores the prompt.
    """

    name = "aesthetic"

    def score(self, prompt: Any, outputs: Sequence[Any]) -> torch.Tensor:
        images = _check_images(self.name, outputs)
        scores = []
        for im in images:
            luma = np.asarray(im.convert("L"), dtype=np.float64) / 255.0  # [H, W]
            grad_x = np.abs(np.diff(luma, axis=1)).mean() if luma.shape[1] > 1 else 0.0
            grad_y = np.abs(np.diff(luma, axis=0)).mean() if luma.shape[0] > 1 else 0.0
            scores.append(luma.std() + (grad_x + grad_y) / 2)
        return torch.tensor(scores, dtype=torch.float32)  # [N]

    def score_tensor(self, prompt: Any, x: torch.Tensor) -> torch.Tensor:
        """The same statistics on pixel tensors x [N, C, H, W] in [-1, 1], differentiable. -> [N]"""
        x = (x / 2 + 0.5).clamp(0, 1)  # what the PNG holds: [0, 1]
        if x.shape[1] >= 3:
            luma = (x[:, :3] * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)).sum(1)
        else:
            luma = x[:, 0]  # [N, H, W]
        flat = luma.flatten(1)
        grad_x = (luma[:, :, 1:] - luma[:, :, :-1]).abs().flatten(1).mean(1) if luma.shape[2] > 1 else 0.0
        grad_y = (luma[:, 1:] - luma[:, :-1]).abs().flatten(1).mean(1) if luma.shape[1] > 1 else 0.0
        return flat.std(1, unbiased=False) + (grad_x + grad_y) / 2  # [N]


def load_image_verifier(spec: str, zoo_folder=None, **options):
    """An image verifier by name (classifier, clip, aesthetic) or a local folder.

    Args:
        spec: ``classifier`` (``zoo:digits-classifier``), ``aesthetic``, ``clip`` (``zoo:clip`` when the zoo
            has one), ``zoo:NAME`` or a folder holding a ``*ForImageClassification`` or ``CLIPModel``.
        zoo_folder: callable name -> folder for zoo lookups (the sdk passes `ponder.zoo.folder`).
        options: ``score`` ("prob" | "logprob" | "logit") for classifiers.
    """
    key = spec.removeprefix("zoo:")
    if key == "aesthetic":
        return FeatureStatsVerifier()
    folder = Path(spec)
    if not folder.is_dir():
        if zoo_folder is None:
            raise ConfigError(f"unknown image verifier {spec!r}")
        name = {"classifier": "digits-classifier"}.get(key, key)
        folder = zoo_folder(name)
    arch = folder_architecture(folder)
    if arch.endswith("ForImageClassification"):
        return ClassifierVerifier.from_folder(folder, name=key if not Path(spec).is_dir() else folder.name,
                                              **options)
    if arch == "CLIPModel":
        return ClipVerifier.from_folder(folder, name="clip" if key == "clip" else folder.name)
    raise ConfigError(f"verifier folder {str(folder)!r} holds a {arch or 'model of unknown class'}; image "
                      "verifiers need a *ForImageClassification or a CLIPModel")


__all__ = ["ClassifierVerifier", "ClipVerifier", "FeatureStatsVerifier", "folder_architecture",
           "load_image_verifier"]
