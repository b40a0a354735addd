"""Recipe for the zoo's `digits-ar` (`ponder zoo train digits-ar`): an AR model over digit patch tokens.

1. A k-means codebook of 2x2 pixel blocks (`vq.fit_codebook`) over the digits task's train split
   (`ponder.modalities.image.digits`: 16x16 images, the held-out 20% never seen).
2. A small `LlamaForCausalLM` trained on [BOS, class token, 64 image tokens] sequences (loss on the
   image tokens), with random one-pixel shifts as augmentation; seeded, a fixed number of AdamW steps,
   checkpointed and resumable (the text zoo's training loop).
3. Card metrics: held-out bits per image token, and — when `zoo:digits-judge` is built — the judge's
   accuracy on plain AR samples (temperature 1), the figure decoders must keep.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ponder.errors import ZooError
from ponder.modalities.image import digits
from ponder.modalities.image.ar import ARImageModel, ImageTokens
from ponder.modalities.image.vq import PatchCodebook, fit_codebook


@dataclass
class ARRecipe:
    """Hyper-parameters of `digits-ar`; written into the card so a rerun reproduces it."""

    name: str = "digits-ar"
    num_codes: int = 64  # k-means codes of 2x2 blocks: mean squared reconstruction error ~0.005 in [-1, 1]
    patch: int = 2  # 16x16 images -> an 8x8 grid: 64 tokens per image
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    steps: int = 700  # AdamW steps (fixed, not a time budget, so reruns match)
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    weight_decay: float = 0.05
    eval_every: int = 350  # steps between held-out evaluations / checkpoints
    judge_samples_per_class: int = 20  # plain AR samples per class the judge labels (card metric)


SMOKE = {"num_codes": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
         "num_attention_heads": 2, "steps": 2, "batch_size": 8, "eval_every": 2, "judge_samples_per_class": 1}


def build_model(cfg: ARRecipe, layout: ImageTokens):
    """A randomly initialised `LlamaForCausalLM` over the layout's ids, seeded from `cfg.seed`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(vocab_size=layout.vocab_size, hidden_size=cfg.hidden_size,
                         intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
                         num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_attention_heads,
                         max_position_embeddings=2 * layout.model_max_length, bos_token_id=layout.bos_token_id,
                         eos_token_id=None, pad_token_id=layout.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = None
    return model


def sequences(codebook: PatchCodebook, layout: ImageTokens, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """images [B, 1, S, S] and labels [B] -> token rows [B, 2 + G*G]: BOS, class, image codes."""
    codes = codebook.encode(x[:, 0])  # [B, G*G]
    head = torch.stack([torch.full_like(y, layout.bos_token_id), layout.num_codes + y], 1)  # [B, 2]
    return torch.cat([head, codes], 1)


def image_nll(model, ids: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood (nats) of the image tokens of rows ids [B, 2 + G*G]."""
    logits = model(input_ids=ids).logits[:, 1:-1]  # [B, G*G, V]: predictions of tokens 2..
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 2:].reshape(-1))


@torch.no_grad()
def held_out_bits(model, codebook, layout) -> float:
    """Bits per image token on the digits held-out split."""
    x, y = digits.load("heldout")
    model.eval()
    return float(image_nll(model, sequences(codebook, layout, x, y))) / math.log(2)


def judge_accuracy(ar: ARImageModel, zoo_dir: Path, per_class: int, seed: int, log=print) -> dict:
    """The held-out judge's accuracy on plain AR samples (temperature 1), when `digits-judge` is built."""
    judge_dir = Path(zoo_dir) / "digits-judge"
    if not (judge_dir / "config.json").is_file():
        log("[digits-ar] no digits-judge built yet: card has no judge accuracy (train digits-judge first)")
        return {}
    from ponder.kernels.sampling import SamplingParams
    from ponder.modalities.image.train import classifier_accuracy, load_classifier
    from ponder.search.core import candidate_generators
    from ponder.search.decoding import plain

    judge, _ = load_classifier(judge_dir)
    labels = torch.arange(len(ar.class_names)).repeat_interleave(per_class)  # [10 * k]
    out = plain(ar, [ar.encode(int(c)) for c in labels], sampling=SamplingParams(), max_new_tokens=ar.tokens_per_image,
                generators=candidate_generators(seed, range(len(labels))))
    acc = classifier_accuracy(judge, ar.images(out.tokens), labels)
    log(f"[digits-ar] judge accuracy of plain AR samples: {acc:.3f}")
    return {"judge_accuracy_plain": round(acc, 4), "judge_samples": len(labels)}


def train_digits_ar(out_dir: Path, cfg: ARRecipe, log=print) -> dict:
    """Fit the codebook, train the LM, evaluate, and write the model folder atomically."""
    from ponder.modalities.text.train import _train_loop

    start = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x, y = digits.load("train")  # [N, 1, 16, 16], [N]
    codebook = fit_codebook(x[:, 0], num_codes=cfg.num_codes, patch=cfg.patch, seed=cfg.seed)
    recon = float(((codebook.decode(codebook.encode(x[:, 0])) - x[:, 0]) ** 2).mean())
    log(f"[digits-ar] codebook: {cfg.num_codes} codes of {cfg.patch}x{cfg.patch}, train MSE {recon:.5f}")
    layout = ImageTokens(cfg.num_codes, list(digits.CLASS_NAMES), codebook.tokens_per_image, codebook.grid)
    model = build_model(cfg, layout)
    gen = torch.Generator().manual_seed(cfg.seed)

    def loss_fn(step: int):
        idx = torch.randint(0, len(y), (cfg.batch_size,), generator=gen)
        batch = digits.augment(x[idx], gen, shift=1, noise=0.0)  # [B, 1, 16, 16]
        ids = sequences(codebook, layout, batch, y[idx])  # [B, 2 + G*G]
        return image_nll(model, ids), ids[:, 2:].numel()

    def evaluate():
        return {"heldout_bits_per_token": round(held_out_bits(model, codebook, layout), 4)}

    result = _train_loop(model, cfg, out_dir, loss_fn, evaluate, log)
    model.eval()
    ar = ARImageModel(model, codebook, layout, name=cfg.name)
    metrics = {"heldout_bits_per_token": round(held_out_bits(model, codebook, layout), 4),
               "codebook_train_mse": round(recon, 6),
               **judge_accuracy(ar, out_dir.parent, cfg.judge_samples_per_class, seed=10_000 + cfg.seed, log=log),
               "train_seconds": round(time.time() - start, 1)}
    card = {"name": cfg.name, "kind": "LlamaForCausalLM over patch-codebook image tokens (model)",
            "parameters": sum(p.numel() for p in model.parameters()),
            "data": "scikit-learn digits, 16x16, ponder.modalities.image.digits train split (held-out 20% unseen)",
            "prompt": "[BOS, class token]; 64 image tokens (8x8 grid of 2x2-pixel codes) follow",
            "recipe": asdict(cfg), "metrics": metrics, "history": result["history"],
            "reproduce": f"ponder zoo train {cfg.name}"}
    tmp = out_dir.with_name(out_dir.name + ".saving")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ar.save(tmp)
    (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    for child in out_dir.iterdir():
        if child.name != "checkpoint":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    for child in tmp.iterdir():
        os.replace(child, out_dir / child.name)
    tmp.rmdir()
    shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)
    log(f"[digits-ar] wrote {out_dir} ({card['parameters']:,} parameters) {json.dumps(metrics)}")
    return card


def train(name: str, out_dir: Path, log=print, steps: int | None = None, smoke: bool = False) -> dict:
    """Rebuild `digits-ar` into ``out_dir/digits-ar`` (out_dir: the image zoo folder); returns its card.

    steps: override the optimiser steps. smoke: a tiny model and a few steps (seconds; shapes only).
    """
    if name != "digits-ar":
        raise ZooError(f"no AR image recipe named {name!r}; the AR image recipe is digits-ar")
    cfg = ARRecipe(**{**asdict(ARRecipe()), **(SMOKE if smoke else {})})
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            raise ZooError(f"steps must be a positive integer, got {steps!r}")
        cfg.steps, cfg.eval_every = steps, min(cfg.eval_every, steps)
    return train_digits_ar(Path(out_dir) / name, cfg, log=log)


__all__ = ["ARRecipe", "train", "train_digits_ar"]
