"""Recipes that train the image zoo (`ponder zoo train NAME`) on the CPU from scikit-learn's digits.

* ``digits``            — a class-conditional diffusion model: diffusers' `UNet2DModel`
                          (``num_class_embeds=10``) with a `DDIMScheduler`, saved as a DDIMPipeline
                          folder (model_index.json with ``id2label``, unet/, scheduler/).
                          Trained on the ``train`` split with the epsilon objective (DDPM).
* ``digits-classifier`` — the verifier search uses: a tiny `ViTForImageClassification`, ``train-a``.
* ``digits-judge``      — the bench's judge, never used by search: a tiny
                          `ResNetForImageClassification` (another architecture), on the disjoint
                          ``train-b`` half with another seed.

Every recipe is seeded, runs a fixed number of steps, and writes safetensors + ``card.json`` (data,
recipe, seed, metrics) into its folder atomically. The classifiers report held-out accuracy; the
diffusion model reports the judge's accuracy on its plain DDIM samples (when the judge is built).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ponder.errors import ZooError
from ponder.modalities.image import digits


@dataclass
class ImageRecipe:
    """One recipe's hyper-parameters; written into the card so the run can be reproduced."""

    name: str
    steps: int  # optimiser steps (fixed, so reruns match)
    batch_size: int
    lr: float
    seed: int
    split: str  # digits split trained on
    channels: tuple[int, ...]  # UNet block widths / ResNet hidden sizes / (ViT hidden,)
    ema_decay: float = 0.0  # >0: ship an exponential moving average of the weights (diffusion)
    eval_samples_per_class: int = 20  # plain samples per class the judge labels (diffusion card metric)
    eval_steps: int = 50  # DDIM steps of those samples


RECIPES: dict[str, ImageRecipe] = {
    # ~1 M parameters, three resolutions (16, 8, 4): ~0.5 s a step on one core.
    "digits": ImageRecipe("digits", steps=1200, batch_size=64, lr=2e-3, seed=0, split="train",
                          channels=(32, 64, 64), ema_decay=0.995),
    "digits-classifier": ImageRecipe("digits-classifier", steps=600, batch_size=64, lr=1e-3, seed=1,
                                     split="train-a", channels=(64,)),
    "digits-judge": ImageRecipe("digits-judge", steps=600, batch_size=64, lr=2e-3, seed=2, split="train-b",
                                channels=(32, 64)),
}
SMOKE = {"steps": 3, "batch_size": 16, "eval_samples_per_class": 1, "eval_steps": 2}


def _lr_at(step: int, cfg: ImageRecipe) -> float:
    """Linear warm-up over 5% of the steps, then cosine to 10% of lr."""
    import math

    warm = max(1, int(0.05 * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _batches(x: torch.Tensor, y: torch.Tensor, cfg: ImageRecipe, generator: torch.Generator):
    """Endless seeded minibatches (reshuffled every epoch): ([B, 1, 16, 16], [B])."""
    while True:
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            yield x[idx], y[idx]


def _fit(name: str, model, opt, cfg: ImageRecipe, loss_fn, log, clip: float | None = None,
         after_step=None) -> list[dict]:
    """The training loop every recipe shares: warm-up + cosine lr, `loss_fn(step)`, optional gradient
    clipping and a hook after each step; returns the loss history (every 100 steps and the last)."""
    start, history = time.time(), []
    model.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if after_step is not None:
            after_step(step)
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, "loss": round(loss.item(), 4)})
            log(f"[{name}] step {step + 1}/{cfg.steps} loss {loss.item():.4f} ({time.time() - start:.0f}s)")
    return history


def _save(out_dir: Path, write) -> None:
    """Run `write(tmp_dir)` and move the finished folder into place (no half-written zoo folder)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- classifiers --------------------------------------------------------------------------------


def rgb(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] in [-1, 1] -> [B, 3, H, W]: what the image processor makes of a grayscale PIL image."""
    return x.expand(-1, 3, -1, -1)


def _classifier(name: str, cfg: ImageRecipe):
    from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

    labels = {"id2label": dict(enumerate(digits.CLASS_NAMES)),
              "label2id": {c: i for i, c in enumerate(digits.CLASS_NAMES)}}
    if name == "digits-classifier":
        hidden = cfg.channels[0]
        config = ViTConfig(image_size=digits.SIZE, patch_size=4, num_channels=3, hidden_size=hidden,
                           num_hidden_layers=4, num_attention_heads=4, intermediate_size=2 * hidden,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **labels)
        return ViTForImageClassification(config)
    config = ResNetConfig(num_channels=3, embedding_size=cfg.channels[0], hidden_sizes=list(cfg.channels),
                          depths=[1] * len(cfg.channels), layer_type="basic", downsample_in_first_stage=False,
                          **labels)
    return ResNetForImageClassification(config)


def image_processor():
    """The processor both classifiers ship with: PIL (any mode) -> RGB 16x16 -> [-1, 1]."""
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": digits.SIZE, "width": digits.SIZE}, do_convert_rgb=True,
                             image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=2)


@torch.no_grad()
def classifier_accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of images [N, 1, 16, 16] whose argmax logit is their label."""
    model.eval()
    pred = torch.cat([model(pixel_values=rgb(x[i:i + 256])).logits.argmax(-1) for i in range(0, len(y), 256)])
    return float((pred == y).float().mean())


def train_classifier(name: str, out_dir: Path, cfg: ImageRecipe, log=print) -> dict:
    """Train `digits-classifier` (ViT) or `digits-judge` (ResNet) on `cfg.split`, with shifts and noise."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = _classifier(name, cfg)
    x, y = digits.load(cfg.split)
    xh, yh = digits.load("heldout")
    batches = _batches(x, y, cfg, gen)

    def loss_fn(step: int) -> torch.Tensor:
        xb, yb = next(batches)
        logits = model(pixel_values=rgb(digits.augment(xb, gen))).logits  # [B, 10]
        return F.cross_entropy(logits, yb)

    start = time.time()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.05)
    history = _fit(name, model, opt, cfg, loss_fn, log)
    metrics = {"heldout_accuracy": round(classifier_accuracy(model, xh, yh), 4),
               "train_accuracy": round(classifier_accuracy(model, x, y), 4),
               "heldout_images": len(yh), "train_seconds": round(time.time() - start, 1)}
    log(f"[{name}] held-out accuracy {metrics['heldout_accuracy']}")
    card = {"name": name, "kind": f"{type(model).__name__} ({'verifier' if name == 'digits-classifier' else 'judge'})",
            "parameters": _n_params(model),
            "data": f"sklearn.datasets.load_digits upsampled to 16x16, split {cfg.split!r} "
                    f"(ponder.modalities.image.digits, split seed {digits.SPLIT_SEED})",
            "recipe": asdict(cfg), "metrics": metrics, "history": history,
            "reproduce": f"ponder zoo train {name}"}

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        image_processor().save_pretrained(tmp)
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")

    _save(out_dir, write)
    return card


def load_classifier(folder: Path):
    """A classifier folder -> (model, processor), via the Auto classes a user's folder loads with."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True).eval()
    return model, AutoImageProcessor.from_pretrained(folder, local_files_only=True)


# ---- diffusion ----------------------------------------------------------------------------------


def scheduler():
    """The DDIM scheduler the digits pipeline ships (cosine betas, epsilon prediction, no clipping)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                         prediction_type="epsilon", set_alpha_to_one=True)


def _unet(cfg: ImageRecipe):
    from diffusers import UNet2DModel

    levels = len(cfg.channels)
    return UNet2DModel(sample_size=digits.SIZE, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=cfg.channels, down_block_types=("DownBlock2D",) * levels,
                       up_block_types=("UpBlock2D",) * levels, num_class_embeds=len(digits.CLASS_NAMES),
                       norm_num_groups=8)


@torch.no_grad()
def ddim_samples(unet, labels: torch.Tensor, steps: int, generator: torch.Generator) -> torch.Tensor:
    """Plain DDIM (eta=0) samples of `labels` [B] -> [B, 1, 16, 16] in [-1, 1]."""
    sched = scheduler()
    sched.set_timesteps(steps)
    x = torch.randn((len(labels), 1, digits.SIZE, digits.SIZE), generator=generator)
    for t in sched.timesteps:
        eps = unet(x, t, class_labels=labels).sample
        x = sched.step(eps, t, x).prev_sample
    return x.clamp(-1, 1)


def train_diffusion(out_dir: Path, cfg: ImageRecipe, log=print) -> dict:
    """Train the class-conditional UNet with the epsilon objective; ship its EMA weights."""
    from diffusers import DDIMPipeline

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    unet = _unet(cfg)
    ema = _unet(cfg)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    sched = scheduler()
    x, y = digits.load(cfg.split)
    batches = _batches(x, y, cfg, gen)

    def loss_fn(step: int) -> torch.Tensor:
        x0, labels = next(batches)
        noise = torch.randn(x0.shape, generator=gen)  # [B, 1, 16, 16]
        t = torch.randint(0, sched.config.num_train_timesteps, (len(labels),), generator=gen)  # [B]
        x_t = sched.add_noise(x0, noise, t)
        return F.mse_loss(unet(x_t, t, class_labels=labels).sample, noise)

    def update_ema(step: int) -> None:
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.mul_(decay).add_(p.detach(), alpha=1 - decay)

    start = time.time()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    history = _fit("digits", unet, opt, cfg, loss_fn, log, clip=1.0, after_step=update_ema)
    ema.eval()
    metrics = {"train_seconds": round(time.time() - start, 1), **_judge_plain_samples(ema, out_dir.parent, cfg, log)}
    card = {"name": "digits", "kind": "UNet2DModel + DDIMScheduler (class-conditional diffusion, DDIMPipeline folder)",
            "parameters": _n_params(ema), "class_names": digits.CLASS_NAMES,
            "data": f"sklearn.datasets.load_digits upsampled to 16x16 in [-1, 1], split {cfg.split!r} "
                    f"(ponder.modalities.image.digits, split seed {digits.SPLIT_SEED})",
            "recipe": asdict(cfg), "metrics": metrics, "history": history, "reproduce": "ponder zoo train digits"}

    def write(tmp: Path) -> None:
        DDIMPipeline(unet=ema, scheduler=sched).save_pretrained(tmp, safe_serialization=True)
        index = json.loads((tmp / "model_index.json").read_text())  # class names where the image loader reads them
        index["id2label"] = {str(i): c for i, c in enumerate(digits.CLASS_NAMES)}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")

    _save(out_dir, write)
    return card


def _judge_plain_samples(unet, zoo_dir: Path, cfg: ImageRecipe, log) -> dict:
    """The judge's accuracy on plain DDIM samples (`eval_samples_per_class` per class), if it is built."""
    judge_dir = Path(zoo_dir) / "digits-judge"
    if not (judge_dir / "config.json").is_file():
        log("[digits] no digits-judge built yet: card has no judge accuracy (train digits-judge first)")
        return {}
    judge, _ = load_classifier(judge_dir)
    labels = torch.arange(len(digits.CLASS_NAMES)).repeat_interleave(cfg.eval_samples_per_class)  # [10 * k]
    x = ddim_samples(unet, labels, cfg.eval_steps, torch.Generator().manual_seed(10_000 + cfg.seed))
    acc = classifier_accuracy(judge, x, labels)
    log(f"[digits] judge accuracy of plain {cfg.eval_steps}-step DDIM samples: {acc:.3f}")
    return {"judge_accuracy_plain": round(acc, 4), "judge_samples": len(labels), "judge_ddim_steps": cfg.eval_steps}


# ---- entry point --------------------------------------------------------------------------------


def train(name: str, zoo_dir: Path, log=print, steps: int | None = None, smoke: bool = False) -> dict:
    """Rebuild image zoo model `name` into ``zoo_dir/name``; returns its card.

    steps: override the recipe's optimiser steps. smoke: a few steps and samples (seconds).
    """
    if name not in RECIPES:
        raise ZooError(f"no image recipe named {name!r}; the image recipes are: {', '.join(RECIPES)}")
    cfg = RECIPES[name]
    if smoke:
        cfg = ImageRecipe(**{**asdict(cfg), **SMOKE})
    if steps is not None:
        cfg = ImageRecipe(**{**asdict(cfg), "steps": int(steps)})
    cfg.channels = tuple(cfg.channels)
    out_dir = Path(zoo_dir) / name
    if name == "digits":
        return train_diffusion(out_dir, cfg, log=log)
    return train_classifier(name, out_dir, cfg, log=log)
