"""The ``tones-judge`` zoo recipe: the music bench's tag classifier and embedding, never used by search.

**Model.** A tiny `ASTForAudioClassification` (Audio Spectrogram Transformer, Gong, Chung and Glass 2021)
with its `ASTFeatureExtractor`. AST rather than `Wav2Vec2ForSequenceClassification` because AST reads a
log-mel filterbank: the features are computed once per run (a cheap kaldi fbank, ~20 ms a clip) and every
training step is a small transformer over 4 x 48 spectrogram patches, where Wav2Vec2 would run its
convolutional encoder over all 64 000 raw samples of every clip at every step (several times the cost on
a CPU for the same trunk). Patches are 16 x 16 (mel x frames) with a time stride of 8 frames (80 ms),
finer than a sixteenth note at the fastest tempo (100 ms), so the note rate that tells the tempo word is
visible to the patch embedding.

**Head.** One model, one head of 4 + 3 + 3 logits: three softmax groups (timbre, register, tempo word, in
the orders of `tones.TIMBRES`, `tones.REGISTERS`, `tones.TEMPO_WORDS`), trained with the sum of the three
groups' cross-entropies; ``config.tag_groups`` records the groups and ``id2label`` names every logit
(``"timbre=pluck"``). One shared trunk rather than one model per group: a third of the cost, and one
embedding for all three. The groups are exclusive (a clip has exactly one tag of each), hence per-group
softmax rather than independent sigmoids; transformers' own ``labels=`` loss does not know the groups, so
the recipe computes its loss itself.

**Embedding.** `TonesJudge.embed` returns AST's pooled output (the mean of its two summary tokens after
the final layer norm), the features the classifier head reads; `frechet_distance` compares two sets of
them (the Fréchet audio distance of Kilgour et al. 2019, here on the judge's embedding).

**Data: the halves rule.** Train-split seeds of `ponder.modalities.music.tones` are cut in two halves by
a second hash, `half_of` (sha256 of ``f"tones-half-{seed}"``, even: ``"teacher"``, odd: ``"judge"``).
The teacher half is for everything search uses (the music generator, ``tones-clap``); this judge trains
only on the judge half, so the bench never grades samples with a model that saw the generator's (or the
verifier's) training clips. Held-out seeds (`tones.split_of`) belong to neither half; the card's held-out
metrics are on them. The rule is a pure function of the seed: the halves never move.

**Recipe.** 3000 judge-half clips (4 s, 16 kHz), fbank features computed once and standardised with their
own mean / std (stored in the feature extractor), a random circular time shift per example (the tags do
not depend on where in the clip a note falls), AdamW with a step-count-independent schedule (linear warm-up,
then inverse square root), so a longer run resumed from a shorter one's checkpoint is the same run.
163 786 parameters (0.66 MB in float32). Measured on the 2 CPU cores (batch 32): 7.5 steps/s when the
machine was otherwise idle, 2-3 steps/s (down to ~1 under the heaviest load seen) while other jobs shared
it; data and features take 30-80 s. So the 3000 steps take ~7 minutes idle, ~20 shared (~50 at ~1 step/s).
A 500-step probe reached held-out accuracies of 0.99 (timbre), 0.96 (register) and 0.62 (tempo word, the
hard group: still underfitting, train 0.64), hence the six times longer recipe.

`train(name, zoo_dir, ...)` writes ``zoo_dir/tones-judge`` (config.json, model.safetensors,
preprocessor_config.json, card.json) atomically; ``zoo_dir/tones-judge/checkpoint`` holds the resumable
state (kept after the run, so ``--steps`` can extend a finished run; git ignores it).

This module also holds what the music recipes share (`train_clap` imports it): the halves rule, the
resumable training loop `fit_resumable`, and the atomic folder write `save_zoo_folder`.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ponder.errors import ConfigError, InputError, ModelLoadError, ZooError, check_int
from ponder.modalities.music import tones

NAME = "tones-judge"
HALVES = ("teacher", "judge")
TAG_GROUPS: dict[str, tuple[str, ...]] = {  # group -> its tags, in logit order
    "timbre": tones.TIMBRES,
    "register": tones.REGISTERS,
    "tempo": tones.TEMPO_WORDS,
}


# ---- the halves rule (shared by the music recipes) ------------------------------------------------------------


def half_of(seed: int) -> str:
    """Which half of the train split a seed is in: ``"teacher"`` when the first 8 bytes of
    sha256(f"tones-half-{seed}") are even, ``"judge"`` when odd. Held-out seeds are in neither: an InputError."""
    check_int("seed", seed, minimum=0)
    if tones.split_of(seed) != "train":
        raise InputError(f"seed {seed} is a held-out tones seed; only train-split seeds have a half")
    digest = hashlib.sha256(f"tones-half-{seed}".encode()).digest()
    return HALVES[int.from_bytes(digest[:8], "big") % 2]


def half_seeds(half: str, count: int, start: int = 0) -> list[int]:
    """The first `count` train-split seeds >= `start` in `half` (``"teacher"`` or ``"judge"``), ascending."""
    if half not in HALVES:
        raise ConfigError(f"unknown half {half!r}; the halves are: {', '.join(HALVES)}")
    check_int("count", count, minimum=0)
    seed = check_int("start", start, minimum=0)
    out: list[int] = []
    while len(out) < count:
        if tones.split_of(seed) == "train" and half_of(seed) == half:
            out.append(seed)
        seed += 1
    return out


# ---- the resumable loop and the atomic write (shared by the music recipes) -------------------------------------


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one training step's batch and augmentation: a pure function of (seed, step), so a
    resumed run draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def warmup_inverse_sqrt(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warm-up to `lr` over `warmup_steps`, then lr * sqrt(warmup_steps / (step + 1)). It does not
    depend on the run's length, so steps 0..k of a 2k-step run equal a k-step run."""
    done = step + 1
    return lr * min(done / warmup_steps, math.sqrt(warmup_steps / done))


def fit_resumable(name: str, model: torch.nn.Module, recipe: dict, out_dir: Path,
                  loss_fn: Callable[[int], torch.Tensor], log: Callable[[str], None], *, steps: int, lr: float,
                  warmup_steps: int, weight_decay: float, checkpoint_every: int, log_every: int = 50,
                  lr_at: Callable[[int], float] | None = None, ema: torch.nn.Module | None = None,
                  ema_decay: float = 0.999) -> dict:
    """Run AdamW steps ``start .. steps - 1`` of ``loss_fn(step) -> loss``, checkpointing into
    ``out_dir/checkpoint`` every `checkpoint_every` steps and at the last one.

    The learning rate of step k is ``lr_at(k)`` (default `warmup_inverse_sqrt` of `lr` and `warmup_steps`).
    With `ema`, that copy of `model` follows an exponential moving average of its weights after every step
    (decay ``min(ema_decay, (1 + k) / (10 + k))``: short early on) and is checkpointed with it.
    A checkpoint is resumed when its recipe equals `recipe` in everything but ``steps`` and it is not ahead
    of `steps`; otherwise the run starts afresh and says why. `loss_fn` must draw its randomness from
    `step_generator` (and the model must have no dropout) so that resuming changes nothing.
    Returns ``{"history": [{"step", "loss"}...], "resumed_from": step, "seconds": this run's, "steps_per_s"}``.
    """
    if lr_at is None:
        def lr_at(step: int) -> float:
            return warmup_inverse_sqrt(step, lr, warmup_steps)
    ckpt = out_dir / "checkpoint"
    key = json.loads(json.dumps({k: v for k, v in recipe.items() if k != "steps"}))  # tuples -> lists
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    start, history = 0, []
    if (ckpt / "state.pt").is_file():
        state = torch.load(ckpt / "state.pt", weights_only=True)
        if state["recipe"] != key:
            changed = sorted(k for k in set(key) | set(state["recipe"]) if key.get(k) != state["recipe"].get(k))
            log(f"[{name}] the checkpoint in {ckpt} is of another recipe ({', '.join(changed)} differ): "
                "starting afresh")
        elif state["step"] > steps:
            log(f"[{name}] the checkpoint in {ckpt} is at step {state['step']}, past {steps}: starting afresh")
        else:
            model.load_state_dict(state["model"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
            start, history = int(state["step"]), list(state["history"])
            log(f"[{name}] resumed at step {start}")
    model.train()
    t0 = time.time()
    for step in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not None:
            decay = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), model.parameters()):
                    pe.mul_(decay).add_(p.detach(), alpha=1 - decay)
        done = step + 1
        if done % log_every == 0 or done == steps:
            rate = (done - start) / max(1e-9, time.time() - t0)
            log(f"[{name}] step {done}/{steps} loss {loss.item():.4f} ({rate:.2f} steps/s)")
        if done % checkpoint_every == 0 or done == steps:
            history.append({"step": done, "loss": round(loss.item(), 4)})
            tmp = ckpt.with_name("checkpoint.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": done, "history": history,
                     "recipe": key}
            if ema is not None:
                state["ema"] = ema.state_dict()
            torch.save(state, tmp / "state.pt")
            shutil.rmtree(ckpt, ignore_errors=True)
            tmp.rename(ckpt)
    model.eval()
    seconds = time.time() - t0
    return {"history": history, "resumed_from": start, "seconds": round(seconds, 1),
            "steps_per_s": round((steps - start) / seconds, 3) if steps > start else None}


def save_zoo_folder(out_dir: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` into ``NAME.saving`` next to `out_dir`, carry over ``out_dir/checkpoint``, and swap
    the finished folder in by renames: `out_dir` is never half-written."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".saving")
    old = out_dir.with_name(out_dir.name + ".old.saving")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write leaves nothing behind
        raise
    if (out_dir / "checkpoint").is_dir():
        (out_dir / "checkpoint").rename(tmp / "checkpoint")
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def n_params(model: torch.nn.Module) -> int:
    """Number of parameters of `model`."""
    return sum(p.numel() for p in model.parameters())


# ---- recipe ---------------------------------------------------------------------------------------------------


@dataclass
class JudgeRecipe:
    """The judge's hyper-parameters; written into the card so the run can be reproduced."""

    steps: int = 3000  # optimiser steps (fixed, so reruns match): 32 epochs of the 3000 clips
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.05
    seed: int = 3  # model init and batches; the image judge's habit: a seed of its own
    train_clips: int = 3000  # judge-half clips (the first 3000 judge-half seeds)
    heldout_clips: int = 400  # held-out clips the card's metrics are measured on
    num_mel_bins: int = 64  # kaldi fbank bands (25 ms windows, 10 ms hop)
    max_length: int = 398  # frames of a 4 s clip (1 + (64000 - 400) // 160): no padding frames
    patch_size: int = 16  # 16 bands x 16 frames per patch
    frequency_stride: int = 16  # non-overlapping in frequency: 4 patch rows
    time_stride: int = 8  # 80 ms: finer than the fastest sixteenth (100 ms); 48 patch columns
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 128
    max_shift_frames: int = 398  # circular time shift drawn in [0, max_shift_frames) per example
    checkpoint_every: int = 250


SMOKE = {"steps": 2, "batch_size": 4, "train_clips": 8, "heldout_clips": 6, "hidden_size": 16, "num_layers": 1,
         "num_heads": 2, "intermediate_size": 32, "checkpoint_every": 1}


def build_model(cfg: JudgeRecipe):
    """A freshly initialised `ASTForAudioClassification` with the 10 grouped tag logits (no dropout, so a
    resumed run is the same run)."""
    from transformers import ASTConfig, ASTForAudioClassification

    labels = [f"{group}={tag}" for group, tags in TAG_GROUPS.items() for tag in tags]
    config = ASTConfig(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                       num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, patch_size=cfg.patch_size,
                       frequency_stride=cfg.frequency_stride, time_stride=cfg.time_stride,
                       max_length=cfg.max_length, num_mel_bins=cfg.num_mel_bins,
                       id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
    # saved in config.json as [group, tags] pairs: a dict's keys would come back sorted, not in logit order
    config.tag_groups = [[group, list(tags)] for group, tags in TAG_GROUPS.items()]
    return ASTForAudioClassification(config)


def feature_extractor(cfg: JudgeRecipe, mean: float, std: float, sample_rate: int = 16000):
    """The `ASTFeatureExtractor` the judge ships: kaldi fbank of `cfg.num_mel_bins` bands, `cfg.max_length`
    frames, standardised as ``(fbank - mean) / (2 std)`` with the training clips' own statistics."""
    from transformers import ASTFeatureExtractor

    return ASTFeatureExtractor(sampling_rate=sample_rate, num_mel_bins=cfg.num_mel_bins, max_length=cfg.max_length,
                               do_normalize=True, mean=float(mean), std=float(std))


def tag_targets(clips: Sequence[tones.Clip]) -> torch.Tensor:
    """Each clip's tag index in every group: int64 [N, 3] (timbre, register, tempo word)."""
    return torch.tensor([[TAG_GROUPS["timbre"].index(c.timbre), TAG_GROUPS["register"].index(c.register),
                          TAG_GROUPS["tempo"].index(c.tempo_word)] for c in clips], dtype=torch.int64)


def group_logits(logits: torch.Tensor, groups: dict[str, Sequence[str]]) -> dict[str, torch.Tensor]:
    """Split [N, sum of group sizes] head logits into one [N, C_g] block per group, in `groups`' order."""
    out, offset = {}, 0
    for group, tags in groups.items():
        out[group] = logits[:, offset:offset + len(tags)]
        offset += len(tags)
    if offset != logits.shape[-1]:
        raise ModelLoadError(f"the judge head has {logits.shape[-1]} logits but its tag groups name {offset} tags")
    return out


def _features(clips: Sequence[tones.Clip], extractor) -> torch.Tensor:
    """Standardised fbank features of clips: float32 [N, frames, mels], in chunks (bounded memory)."""
    chunks = [extractor([c.waveform for c in clips[i:i + 256]], sampling_rate=extractor.sampling_rate,
                        return_tensors="pt")["input_values"] for i in range(0, len(clips), 256)]
    return torch.cat(chunks)


@torch.no_grad()
def _accuracies(model, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Per-group and all-three accuracy of the judge on features [N, frames, mels] with targets [N, 3]."""
    logits = torch.cat([model(input_values=x[i:i + 128]).logits for i in range(0, len(x), 128)])  # [N, 10]
    pred = torch.stack([g.argmax(-1) for g in group_logits(logits, TAG_GROUPS).values()], 1)  # [N, 3]
    right = pred == y
    out = {f"{group}_accuracy": round(float(right[:, k].float().mean()), 4) for k, group in enumerate(TAG_GROUPS)}
    out["all_tags_accuracy"] = round(float(right.all(1).float().mean()), 4)
    return out


def train(name: str, zoo_dir: Path, log=print, steps: int | None = None, smoke: bool = False) -> dict:
    """Train ``tones-judge`` into ``zoo_dir/tones-judge`` and return its card.

    steps: override the recipe's optimiser steps (a checkpoint of the same recipe is resumed / extended).
    smoke: a tiny model on a few clips for 2 steps (seconds).
    """
    if name != NAME:
        raise ZooError(f"the tones-judge recipe trains {NAME!r} only, not {name!r}")
    cfg = JudgeRecipe(**SMOKE) if smoke else JudgeRecipe()
    if steps is not None:
        cfg = replace(cfg, steps=check_int("steps", steps))
    out_dir = Path(zoo_dir) / NAME
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)

    t0 = time.time()
    train_seeds = half_seeds("judge", cfg.train_clips)
    train_clips = [tones.generate(s) for s in train_seeds]
    held_clips = list(tones.clips("heldout", cfg.heldout_clips))
    sample_rate = train_clips[0].sample_rate
    raw = feature_extractor(cfg, 0.0, 0.5, sample_rate)  # (x - 0) / (2 * 0.5): the raw fbank
    x_raw = _features(train_clips, raw)  # [N, frames, mels]
    mean, std = float(x_raw.mean()), float(x_raw.std())
    extractor = feature_extractor(cfg, mean, std, sample_rate)
    x = ((x_raw - mean) / (2 * std)).to(torch.float16)  # [N, frames, mels], the extractor's normalisation
    del x_raw
    xh = _features(held_clips, extractor)  # [H, frames, mels]
    y, yh = tag_targets(train_clips), tag_targets(held_clips)  # [N, 3], [H, 3]
    data_seconds = time.time() - t0
    log(f"[{NAME}] {len(train_clips)} judge-half clips, {len(held_clips)} held-out, features {tuple(x.shape)} "
        f"in {data_seconds:.0f}s; {n_params(model):,} parameters")

    def loss_fn(step: int) -> torch.Tensor:
        gen = step_generator(cfg.seed, step)
        idx = torch.randperm(len(y), generator=gen)[:cfg.batch_size]  # [B]
        shifts = torch.randint(0, max(1, cfg.max_shift_frames), (len(idx),), generator=gen).tolist()
        xb = torch.stack([torch.roll(x[i].float(), s, dims=0) for i, s in zip(idx.tolist(), shifts)])  # [B, F, M]
        groups = group_logits(model(input_values=xb).logits, TAG_GROUPS)  # {group: [B, C_g]}
        return sum(F.cross_entropy(logits, y[idx, k]) for k, logits in enumerate(groups.values()))

    run = fit_resumable(NAME, model, asdict(cfg), out_dir, loss_fn, log, steps=cfg.steps, lr=cfg.lr,
                        warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
                        checkpoint_every=cfg.checkpoint_every)
    judge = TonesJudge(model, extractor)
    eval_clips = min(len(held_clips), len(train_clips))
    train_emb = judge.embed(torch.from_numpy(np.stack([c.waveform for c in train_clips[:eval_clips]])))
    held_emb = judge.embed(torch.from_numpy(np.stack([c.waveform for c in held_clips[:eval_clips]])))
    metrics = {f"heldout_{k}": v for k, v in _accuracies(model, xh, yh).items()}
    metrics.update({f"train_{k}": v for k, v in _accuracies(model, x[:len(xh)].float(), y[:len(xh)]).items()})
    metrics["frechet_heldout_vs_train"] = round(frechet_distance(held_emb, train_emb), 4)  # the real-vs-real floor
    metrics.update({"heldout_clips": len(held_clips), "embedding_dim": int(held_emb.shape[1]),
                    "steps_per_s": run["steps_per_s"], "data_seconds": round(data_seconds, 1),
                    "train_seconds_this_run": run["seconds"], "resumed_from": run["resumed_from"]})
    log(f"[{NAME}] held-out accuracy: " + ", ".join(f"{g} {metrics[f'heldout_{g}_accuracy']}" for g in TAG_GROUPS)
        + f"; all three {metrics['heldout_all_tags_accuracy']}")
    card = {"name": NAME, "kind": "ASTForAudioClassification (judge: the music bench's tag classifier and "
                                  "embedding, never used by search)",
            "parameters": n_params(model), "tag_groups": {g: list(t) for g, t in TAG_GROUPS.items()},
            "data": f"ponder.modalities.music.tones clips ({sample_rate} Hz, {train_clips[0].seconds:g} s), the "
                    f"first {len(train_seeds)} train-split seeds of the 'judge' half (train_judge.half_of: sha256 "
                    f"of 'tones-half-SEED', odd), seeds {train_seeds[0]}..{train_seeds[-1]}; metrics on the first "
                    f"{len(held_clips)} held-out seeds (tones.split_of)",
            "seed": cfg.seed, "recipe": asdict(cfg), "metrics": metrics, "history": run["history"],
            "reproduce": f"ponder zoo train {NAME}"}
    card = json.loads(json.dumps(card))  # what the file holds (tuples as lists) is what train returns

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        extractor.save_pretrained(tmp)
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")

    save_zoo_folder(out_dir, write)
    return card


# ---- the judge ------------------------------------------------------------------------------------------------


def frechet_distance(emb_a: Any, emb_b: Any) -> float:
    """The Fréchet distance between Gaussians fitted to two embedding sets [N_a, D] and [N_b, D]:

        ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))

    (Dowson and Landau 1982; the FID / FAD formula), means and unbiased covariances (``np.cov``) in
    float64, the matrix square root by `scipy.linalg.sqrtm` (a small ridge is added when the product is
    too singular for it to be finite). Rounding can leave a tiny negative value; it is returned as 0.
    """
    from scipy import linalg

    a, b = _embedding_matrix(emb_a, "emb_a"), _embedding_matrix(emb_b, "emb_b")
    if a.shape[1] != b.shape[1]:
        raise InputError(f"frechet_distance needs embeddings of one width, got {a.shape[1]} and {b.shape[1]}")
    dim = a.shape[1]
    mu_a, mu_b = a.mean(0), b.mean(0)  # [D]
    cov_a = np.cov(a, rowvar=False).reshape(dim, dim)  # [D, D]
    cov_b = np.cov(b, rowvar=False).reshape(dim, dim)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        ridge = 1e-6 * np.eye(dim)
        covmean = linalg.sqrtm((cov_a + ridge) @ (cov_b + ridge))
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(np.real(covmean))
    return max(float(value), 0.0)


def _embedding_matrix(emb: Any, what: str) -> np.ndarray:
    matrix = np.asarray(emb.detach().cpu() if isinstance(emb, torch.Tensor) else emb, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] < 2 or matrix.shape[1] < 1:
        raise InputError(f"frechet_distance needs {what} shaped [N, D] with N >= 2, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise InputError(f"frechet_distance got non-finite values in {what}")
    return matrix


class TonesJudge:
    """The bench's judge of music outputs: tag probabilities per group and a clip embedding.

    Waves are a tensor or array [N, T] / [N, C, T] (channels averaged) at `sample_rate` (the judge's own,
    16 kHz, when None), or a sequence of `Audio` outputs (each resampled from its own rate).
    """

    frechet_distance = staticmethod(frechet_distance)

    def __init__(self, model, extractor, batch_size: int = 64):
        pairs = getattr(model.config, "tag_groups", None)
        if not isinstance(pairs, list) or not pairs:
            raise ModelLoadError("the judge's config.json has no tag_groups (is it a tones-judge folder?)")
        self.groups: dict[str, tuple[str, ...]] = {str(g): tuple(tags) for g, tags in pairs}  # logit order
        labels = [f"{g}={tag}" for g, tags in self.groups.items() for tag in tags]
        if labels != [model.config.id2label[i] for i in range(len(model.config.id2label))]:
            raise ModelLoadError(f"the judge's tag_groups {labels} do not match its id2label "
                                 f"{model.config.id2label}")
        self.model = model.eval()
        self.extractor = extractor
        self.sample_rate = int(extractor.sampling_rate)
        self.batch_size = check_int("batch_size", batch_size)

    @classmethod
    def from_folder(cls, folder: str | Path) -> TonesJudge:
        """Load a judge folder (``ASTForAudioClassification`` + ``ASTFeatureExtractor``, safetensors, no hub)."""
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{str(folder)!r} is not a judge folder (no config.json)")
        try:
            model = AutoModelForAudioClassification.from_pretrained(folder, local_files_only=True,
                                                                    use_safetensors=True, dtype=torch.float32)
            extractor = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, TypeError) as err:
            raise ModelLoadError(f"cannot load a tones judge from {str(folder)!r}: {err}") from None
        return cls(model, extractor)

    def _waves(self, waves: Any, sample_rate: int | None) -> list[np.ndarray]:
        """The clips as mono float32 arrays [T] at the judge's rate."""
        from ponder.modalities.music.controls import audio_waves, to_mono
        from ponder.search.core import Audio

        if isinstance(waves, (list, tuple)) and waves and all(isinstance(w, Audio) for w in waves):
            mono = audio_waves(waves, self.sample_rate, "judge")
        else:
            if isinstance(waves, np.ndarray):
                waves = torch.from_numpy(waves)
            mono = list(to_mono(waves, "judged clip"))  # [T] each
            if sample_rate is not None and int(sample_rate) != self.sample_rate:
                import torchaudio

                mono = [torchaudio.functional.resample(w, int(sample_rate), self.sample_rate) for w in mono]
        return [w.detach().cpu().float().numpy() for w in mono]

    @torch.no_grad()
    def _forward(self, waves: Any, sample_rate: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled embeddings [N, D], head logits [N, K]) of the clips, in batches."""
        clips = self._waves(waves, sample_rate)
        pooled, logits = [], []
        for i in range(0, len(clips), self.batch_size):
            x = self.extractor(clips[i:i + self.batch_size], sampling_rate=self.sample_rate,
                               return_tensors="pt")["input_values"]  # [B, frames, mels]
            emb = self.model.audio_spectrogram_transformer(input_values=x).pooler_output  # [B, D]
            pooled.append(emb)
            logits.append(self.model.classifier(emb))  # [B, K]
        return torch.cat(pooled), torch.cat(logits)

    def tag_probs(self, waves: Any, sample_rate: int | None = None) -> dict[str, torch.Tensor]:
        """Per group, the probability of each of its tags: ``{group: [N, C_g]}`` (rows sum to 1; columns in
        the order of ``self.groups[group]``)."""
        _, logits = self._forward(waves, sample_rate)
        return {g: block.softmax(-1) for g, block in group_logits(logits, self.groups).items()}

    def predict_tags(self, waves: Any, sample_rate: int | None = None) -> list[str]:
        """The most likely tag of each group, joined like `tones.Clip.tags` (``"pluck, high, fast"``)."""
        probs = self.tag_probs(waves, sample_rate)
        best = [[self.groups[g][int(k)] for k in p.argmax(-1)] for g, p in probs.items()]  # [G][N]
        return [", ".join(tags) for tags in zip(*best)]

    def embed(self, waves: Any, sample_rate: int | None = None) -> torch.Tensor:
        """The judge's embedding of each clip (AST's pooled output, what its head reads): [N, D]."""
        return self._forward(waves, sample_rate)[0]
