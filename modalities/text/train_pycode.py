"""Recipes for ``zoo:pycode`` and ``zoo:pycode-draft`` (`ponder zoo train pycode | pycode-draft`).

* ``pycode``       — a `LlamaForCausalLM` (~3.4 M parameters, 6 layers) trained from scratch on the
                     Python standard library's train files (`ponder.modalities.text.pycode`) with a
                     byte-level BPE of 4096 tokens learned on the same files.
* ``pycode-draft`` — a one-layer `LlamaForCausalLM` with the same tokenizer and width, started from
                     the target's embeddings, first layer and final norm, then distilled from it
                     (KL to the target's next-token distribution, plus half the data cross-entropy).

Context: train short, then extend. The first ``1 - long_frac`` of the steps read random windows of
`short_context` (512) tokens of the packed train stream; the rest read windows of `long_context`
(2048) with the batch cut so a step holds the same number of tokens. RoPE's base stays at 10 000:
with head size 32 its slowest rotation spans ~35 000 positions, so 2048 needs no rescaling, only
training at that length (positions 512-2047 are new to the model in the second phase). One cosine
schedule spans both phases. ``max_position_embeddings`` is 2048.

Every step's windows are a pure function of (seed, step), so a resumed run (the text recipes'
`_train_loop` checkpoints) sees what an unbroken one would. Cards record the Python version and the
file set's hash (`pycode.data_info`); figures are held-out per-token loss and perplexity at 512 and
at 2048 context, bits per byte, and for the draft its greedy agreement with the target.
Sized for one CPU thread: about 35 minutes for the target, 12 for the draft.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ponder.modalities.text import pycode
from ponder.modalities.text.train import (
    _as_shipped,
    _card,
    _load_target,
    _save,
    _train_loop,
    llama_config,
    recipe_config,
)


@dataclass
class PycodeConfig:
    """One pycode recipe's hyper-parameters (the fields the text recipes' loop and `llama_config`
    read, plus the context schedule); written into the card."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    steps: int  # optimiser steps (fixed, so reruns match)
    batch_size: int  # windows per step at the short context (fewer at the long one: same tokens)
    lr: float
    seed: int = 0
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    weight_decay: float = 0.1
    eval_every: int = 100  # steps between held-out evaluations / checkpoints
    short_context: int = 512  # first phase's window
    long_context: int = 2048  # the extension phase's window, = max_position_embeddings
    long_frac: float = 0.2  # share of the steps at the long context (the last ones)
    vocab_size: int = pycode.DEFAULT_VOCAB
    init_from_target_layers: int = 0  # draft: start from the target's embeddings + first k layers
    distill_ce_weight: float = 0.5  # draft: weight of the data cross-entropy beside the KL


RECIPES: dict[str, PycodeConfig] = {
    # 6 narrow layers: one decode step is mostly per-layer work, so a one-layer draft costs ~1/6 of it.
    # 1000 steps x 4096 tokens = 4.1 M tokens, about two passes over the 2.1 M-token train stream: one
    # free CPU thread (1.6 s a step at 512, 3.2 s at 2048) does it in ~35 min. Half of it (500 steps,
    # lr 2e-3) ended at held-out loss 4.70 with the loss still falling, and a one-layer draft at 4.87.
    "pycode": PycodeConfig("pycode", 192, 512, 6, 6, steps=1000, batch_size=8, lr=3e-3),
    # ~2.1 s a step at 512 (its own step plus the target's forward), 300 steps in ~12 min.
    "pycode-draft": PycodeConfig("pycode-draft", 192, 512, 1, 6, steps=300, batch_size=8, lr=1e-3,
                                 weight_decay=0.0, init_from_target_layers=1, long_frac=0.15),
}

SMOKE_SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "batch_size": 4,
               "short_context": 32, "long_context": 64, "vocab_size": 300}
SMOKE_FILES = (6, 2)  # train, held-out files a smoke run reads
SMOKE_HELDOUT_TOKENS = 1024  # and the held-out tokens it scores


def window_length(cfg: PycodeConfig, step: int) -> tuple[int, int]:
    """(windows, tokens per window) of a step: the short context first, the long one for the last
    `long_frac` of the steps, with the same tokens per step."""
    long_from = cfg.steps - int(round(cfg.long_frac * cfg.steps))
    if step < long_from:
        return cfg.batch_size, cfg.short_context
    return max(1, cfg.batch_size * cfg.short_context // cfg.long_context), cfg.long_context


def windows(stream: torch.Tensor, cfg: PycodeConfig, step: int) -> torch.Tensor:
    """The step's training windows [B, T] of the packed stream, at starts drawn from (seed, step)."""
    count, length = window_length(cfg, step)
    if len(stream) <= length:
        raise ValueError(f"the train stream ({len(stream)} tokens) is shorter than a window of {length}")
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    starts = torch.randint(0, len(stream) - length, (count,), generator=gen)  # [B]
    return torch.stack([stream[s : s + length] for s in starts.tolist()]).long()  # [B, T]


@dataclass
class Corpus:
    """The split's files and their token streams under one tokenizer."""

    train_files: list[str]
    heldout_files: list[str]
    train: torch.Tensor  # [N] packed ids
    heldout: torch.Tensor  # [M]
    heldout_bytes: float  # UTF-8 bytes of the held-out text (bits per byte)


def _files(smoke: bool) -> tuple[list[str], list[str]]:
    files = pycode.source_files()
    train, heldout = pycode.split_files("train", files=files), pycode.split_files("heldout", files=files)
    if smoke:
        train, heldout = train[: SMOKE_FILES[0]], heldout[: SMOKE_FILES[1]]
    return train, heldout


def _corpus(tokenizer, train_files: list[str], heldout_files: list[str], train_texts=None,
            smoke: bool = False) -> Corpus:
    train_texts = train_texts or [pycode.read_source(f) for f in train_files]
    heldout_texts = [pycode.read_source(f) for f in heldout_files]
    heldout = pycode.token_stream(tokenizer, heldout_texts)
    heldout_bytes = sum(len(t.encode()) for t in heldout_texts)
    if smoke:  # score a slice only; bytes in proportion
        heldout_bytes = heldout_bytes * min(1.0, SMOKE_HELDOUT_TOKENS / len(heldout))
        heldout = heldout[:SMOKE_HELDOUT_TOKENS]
    return Corpus(train_files, heldout_files, pycode.token_stream(tokenizer, train_texts), heldout, heldout_bytes)


def _llama(cfg: PycodeConfig, tokenizer):
    from transformers import LlamaForCausalLM

    config = llama_config(cfg, tokenizer)
    config.max_position_embeddings = cfg.long_context  # llama_config's 256 is the arith models'
    return LlamaForCausalLM(config)


def _lm_metrics(model, corpus: Corpus, cfg: PycodeConfig, prefix: str = "heldout") -> dict:
    """Loss / perplexity over the whole held-out stream at both contexts, and bits per byte at the long one."""
    out = {}
    for ctx in (cfg.short_context, cfg.long_context):
        m = pycode.heldout_loss(model, corpus.heldout, ctx)
        out[f"{prefix}_loss_ctx{ctx}"], out[f"{prefix}_ppl_ctx{ctx}"] = m["loss"], m["perplexity"]
        if ctx == cfg.long_context:
            # nats per token * tokens / bytes / ln 2; token count excludes each window's first token
            scored_bytes = corpus.heldout_bytes * m["tokens"] / len(corpus.heldout)
            out[f"{prefix}_bits_per_byte_ctx{ctx}"] = round(m["loss"] * m["tokens"] / scored_bytes / math.log(2), 4)
    out["heldout_tokens"] = len(corpus.heldout)
    return out


CHECK_CHUNKS = 4  # the cheap figure a test recomputes from the shipped weights


def check_figure(model, stream: torch.Tensor, cfg_or_card) -> float:
    """Held-out loss over the first `CHECK_CHUNKS` windows of the short context: the card figure a
    test re-measures on the shipped weights in a second."""
    recipe = cfg_or_card["recipe"] if isinstance(cfg_or_card, dict) else asdict(cfg_or_card)
    return pycode.heldout_loss(model, stream, recipe["short_context"], max_chunks=CHECK_CHUNKS)["loss"]


def _card_extra(tokenizer, corpus: Corpus) -> dict:
    return {"stdlib": pycode.data_info(files=pycode.source_files()),
            "train_files": len(corpus.train_files), "heldout_files": len(corpus.heldout_files),
            "tokenizer": {"kind": "byte-level BPE (tokenizers), GPT-2 pre-tokenizer, BOS <|endoftext|> per file",
                          "vocab_size": len(tokenizer), "train_tokens": len(corpus.train),
                          "heldout_bytes_per_token": round(corpus.heldout_bytes / len(corpus.heldout), 3)}}


DATA = ("the Python standard library's own *.py files on the training machine (tests, site-packages, idlelib, "
        "turtledemo, encodings, pydoc_data, ensurepip skipped); held out: sha1(relative path) bucket 0 of 10")


def train_target(out_dir: Path, cfg: PycodeConfig, log=print, smoke: bool = False) -> dict:
    torch.manual_seed(cfg.seed)
    train_files, heldout_files = _files(smoke)
    train_texts = [pycode.read_source(f) for f in train_files]
    tokenizer = pycode.train_tokenizer(train_texts, cfg.vocab_size)  # deterministic: a resumed run gets the same
    corpus = _corpus(tokenizer, train_files, heldout_files, train_texts, smoke)
    log(f"[{cfg.name}] {len(train_files)} train files ({len(corpus.train):,} tokens), {len(heldout_files)} "
        f"held-out ({len(corpus.heldout):,} tokens), vocab {len(tokenizer)}")
    model = _llama(cfg, tokenizer)

    def loss_fn(step):
        ids = windows(corpus.train, cfg, step)  # [B, T]
        return model(input_ids=ids, labels=ids).loss, ids.numel()

    def evaluate():
        m = pycode.heldout_loss(model, corpus.heldout, cfg.short_context, max_chunks=16)
        return {f"heldout_loss_ctx{cfg.short_context}_16chunks": m["loss"]}

    out_dir.mkdir(parents=True, exist_ok=True)
    result = _train_loop(model, cfg, out_dir, loss_fn, evaluate, log)
    _as_shipped(model)
    log(f"[{cfg.name}] measuring the card's figures")
    metrics = _lm_metrics(model, corpus, cfg)
    train_probe = pycode.heldout_loss(model, corpus.train, cfg.short_context, max_chunks=64)
    metrics[f"train_loss_ctx{cfg.short_context}_64chunks"] = train_probe["loss"]
    metrics["check_loss"] = check_figure(model, corpus.heldout, cfg)
    card = _card(cfg, model, "LlamaForCausalLM (target)", DATA, metrics, result,
                 context=cfg.long_context, train_seconds=result["train_seconds_this_run"],
                 **_card_extra(tokenizer, corpus))
    _save(model, tokenizer, out_dir, card)
    return card


@torch.no_grad()
def draft_agreement(draft, target, tokenizer, prompts: list[str], max_new_tokens: int) -> float:
    """Share of positions along the target's greedy continuations of `prompts` where the draft's
    argmax is the target's (the chance a greedy draft token is accepted, position by position)."""
    agree = total = 0
    for prompt in prompts:
        enc = tokenizer([prompt], return_tensors="pt")
        path = target.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)  # [1, P+N]
        start = enc["input_ids"].shape[1] - 1  # logits at P-1 predict the first new token
        want = target(input_ids=path).logits[0, start:-1].argmax(-1)  # [N]
        got = draft(input_ids=path).logits[0, start:-1].argmax(-1)  # [N]
        agree += int((want == got).sum())
        total += len(want)
    return agree / max(1, total)


@torch.no_grad()
def text_agreement(draft, target, stream: torch.Tensor, context: int, max_chunks: int) -> float:
    """Share of held-out text positions where draft and target predict the same next token."""
    chunks = stream[: (len(stream) // context) * context].view(-1, context)[:max_chunks].long()  # [C, T]
    agree = 0
    for ids in chunks.split(8):
        agree += int((draft(input_ids=ids).logits.argmax(-1) == target(input_ids=ids).logits.argmax(-1)).sum())
    return agree / chunks.numel()


def _start_from_target(draft, target, layers: int, log) -> None:
    """Copy the target's embeddings (tied to its LM head), first `layers` decoder layers and final
    norm into the draft: the draft starts where the target's own first layers read the text."""
    wanted = {k: v for k, v in target.model.state_dict().items()
              if not k.startswith("layers.") or int(k.split(".")[1]) < layers}
    missing, unexpected = draft.model.load_state_dict(wanted, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"draft/target shapes differ: missing {missing}, unexpected {unexpected}")
    log(f"[init] draft = target embeddings + layers 0..{layers - 1} + final norm")


def train_draft(out_dir: Path, cfg: PycodeConfig, target_dir: Path, log=print, smoke: bool = False) -> dict:
    """Distil the one-layer draft: KL(p_target || p_draft) + `distill_ce_weight` x data CE."""
    torch.manual_seed(cfg.seed)
    target, tokenizer = _load_target(target_dir)
    for p in target.parameters():
        p.requires_grad_(False)
    corpus = _corpus(tokenizer, *_files(smoke), smoke=smoke)
    model = _llama(cfg, tokenizer)
    if cfg.init_from_target_layers:
        _start_from_target(model, target, cfg.init_from_target_layers, log)

    def loss_fn(step):
        ids = windows(corpus.train, cfg, step + 7919)  # other windows than the target's own steps
        with torch.no_grad():
            teacher = F.log_softmax(target(input_ids=ids).logits.float(), -1)  # [B, T, V]
        out = model(input_ids=ids, labels=ids)
        student = F.log_softmax(out.logits.float(), -1)  # [B, T, V]
        kl = F.kl_div(student.flatten(0, 1), teacher.flatten(0, 1), log_target=True, reduction="batchmean")
        return kl + cfg.distill_ce_weight * out.loss, ids.numel()

    def evaluate():
        return {"heldout_argmax_agreement_8chunks": round(
            text_agreement(model, target, corpus.heldout, cfg.short_context, 8), 4)}

    out_dir.mkdir(parents=True, exist_ok=True)
    result = _train_loop(model, cfg, out_dir, loss_fn, evaluate, log)
    _as_shipped(model)
    log(f"[{cfg.name}] measuring the card's figures")
    count, prompt_tokens, new_tokens = (2, 16, 8) if smoke else (16, 384, 64)
    if smoke:
        prompts = _smoke_prompts(tokenizer, corpus, count, prompt_tokens)
    else:
        prompts = pycode.heldout_prompts(tokenizer, count, prompt_tokens, min_rest_tokens=new_tokens)
    metrics = {"greedy_agreement_with_target": round(draft_agreement(model, target, tokenizer, prompts, new_tokens), 4),
               "agreement_prompts": f"{count} held-out file prefixes of <= {prompt_tokens} tokens, "
                                    f"{new_tokens} greedy target tokens each",
               f"heldout_argmax_agreement_ctx{cfg.short_context}": round(
                   text_agreement(model, target, corpus.heldout, cfg.short_context, 64), 4)}
    metrics.update(_lm_metrics(model, corpus, cfg))
    metrics["check_loss"] = check_figure(model, corpus.heldout, cfg)
    card = _card(cfg, model, "LlamaForCausalLM (draft, distilled from pycode)",
                 DATA + "; teacher = the pycode target's next-token distribution", metrics, result,
                 target="pycode", context=cfg.long_context, train_seconds=result["train_seconds_this_run"],
                 **_card_extra(tokenizer, corpus))
    _save(model, tokenizer, out_dir, card)
    return card


def _smoke_prompts(tokenizer, corpus: Corpus, count: int, prompt_tokens: int) -> list[str]:
    """Prompts for a smoke run: the held-out stream's first windows as text."""
    ids = corpus.heldout[: count * prompt_tokens].view(count, prompt_tokens).tolist()
    return [tokenizer.decode(row, skip_special_tokens=True) or "x" for row in ids]


def train(name: str, zoo_dir: Path, log=print, steps: int | None = None, smoke: bool = False) -> dict:
    """Train zoo model `name` ("pycode" | "pycode-draft") into ``zoo_dir/name``; returns its card.

    steps: override the recipe's step count. smoke: a tiny model, a vocabulary of 300, contexts of
    32 / 64 and a handful of files — the recipe end to end in seconds (tests); shape checks only.
    """
    if name not in RECIPES:
        raise KeyError(name)
    cfg = recipe_config(RECIPES[name], SMOKE_SHAPE, steps, smoke)
    out = zoo_dir / name
    if name == "pycode":
        return train_target(out, cfg, log, smoke=smoke)
    return train_draft(out, cfg, zoo_dir / "pycode", log, smoke=smoke)
