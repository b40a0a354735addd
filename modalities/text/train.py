"""Recipes that train the text zoo (`ponder zoo train NAME`) on the CPU, from data ponder generates.

* ``arith``        — the target: a `LlamaForCausalLM` (~15 M parameters) trained on the arith task.
* ``arith-draft``  — a tiny `LlamaForCausalLM` distilled from the target (KL to the target's
                     next-token distribution on arith text), for speculative decoding.

The verifiers' recipes (``prm``, ``orm``) live in `train_verifiers`. Every recipe is seeded, runs
a fixed number of steps (so a rerun reproduces it), checkpoints as it goes and resumes after a kill,
and writes safetensors + tokenizer + ``card.json`` into its output folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ponder.modalities.text import arith

# ---- model shapes --------------------------------------------------------------------------------


@dataclass
class RecipeConfig:
    """One recipe's hyper-parameters; written into the card so the run can be reproduced."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    steps: int  # optimiser steps (fixed, not a time budget, so reruns match)
    batch_size: int  # problems per step
    lr: float
    seed: int = 0
    warmup_frac: float = 0.05  # linear warm-up share of the steps
    min_lr_frac: float = 0.1  # cosine decays to this share of lr
    weight_decay: float = 0.1
    eval_every: int = 250  # steps between held-out evaluations / checkpoints
    continue_steps: int = 0  # >0: a second stage continues from the first stage's shipped weights
    continue_lr: float = 0.0  # peak lr of the second stage (its own warm-up and cosine)
    arith: dict = field(default_factory=lambda: asdict(arith.ArithConfig()))


RECIPES: dict[str, RecipeConfig] = {
    # ~14 M parameters: one decode step (~11 ms on 2 cores) is dominated by the weights.
    # Stage 1 (1000 steps) left the loss still falling fast (0.27 -> 0.18 over its last 250 steps)
    # and the target wrong on 64 % of its +/- steps; stage 2 continues on the next problems of the
    # same stream with a fresh warm-up and cosine.
    "arith": RecipeConfig("arith", 384, 1024, 8, 6, steps=1000, batch_size=64, lr=1.5e-3,
                          continue_steps=600, continue_lr=6e-4, eval_every=200),
    # one layer: its decode step costs about a tenth of the target's.
    "arith-draft": RecipeConfig("arith-draft", 256, 768, 1, 4, steps=400, batch_size=64, lr=2e-3),
}


def llama_config(cfg: RecipeConfig, tokenizer, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=256,
        rope_theta=10000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **extra,
    )


# ---- batches -------------------------------------------------------------------------------------


def lm_batch(tokenizer, texts: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded (prompt, completion) batch; loss only on the completion and EOS.

    Returns input_ids / attention_mask / labels, each [B, T].
    """
    rows, labels = [], []
    for prompt, completion in texts:
        p = tokenizer(prompt)["input_ids"]  # BOS + prompt chars
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(lb)] = torch.tensor(lb)
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def _lr_at(step: int, cfg: RecipeConfig) -> float:
    warm = max(1, int(cfg.warmup_frac * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


# ---- a resumable training loop shared by every recipe --------------------------------------------


def _train_loop(
    model,
    cfg: RecipeConfig,
    out_dir: Path,
    loss_fn: Callable[[int], tuple[torch.Tensor, int]],
    evaluate: Callable[[], dict] | None,
    log: Callable[[str], None],
) -> dict:
    """Run `cfg.steps` AdamW steps of `loss_fn(step) -> (loss, tokens)`, checkpointing into
    ``out_dir/checkpoint`` every `cfg.eval_every` steps and resuming from it when present."""
    ckpt = out_dir / "checkpoint"
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    start, history = 0, []
    if (ckpt / "state.pt").exists():
        state = torch.load(ckpt / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, history = state["step"], state["history"]
        torch.set_rng_state(state["torch_rng"])
        log(f"[{cfg.name}] resumed at step {start}")
    model.train()
    t0, tokens = time.time(), 0
    for step in range(start, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        loss, n_tok = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += n_tok
        done = step + 1
        if done % 25 == 0 or done == cfg.steps:
            rate = tokens / max(1e-9, time.time() - t0)
            log(f"[{cfg.name}] step {done}/{cfg.steps} loss {loss.item():.4f} {rate:,.0f} tok/s")
        if done % cfg.eval_every == 0 or done == cfg.steps:
            metrics = {"step": done, "loss": round(loss.item(), 4)}
            if evaluate is not None:
                model.eval()
                metrics.update(evaluate())
                model.train()
            history.append(metrics)
            log(f"[{cfg.name}] eval {json.dumps(metrics)}")
            tmp = ckpt.with_name("checkpoint.tmp")
            tmp.mkdir(parents=True, exist_ok=True)
            torch.save(
                {"model": model.state_dict(), "opt": opt.state_dict(), "step": done,
                 "history": history, "torch_rng": torch.get_rng_state()},
                tmp / "state.pt",
            )
            shutil.rmtree(ckpt, ignore_errors=True)
            tmp.rename(ckpt)
    model.eval()
    return {"history": history, "train_seconds_this_run": round(time.time() - t0, 1)}


def _skip_trained(stream, out_dir: Path, cfg: RecipeConfig) -> None:
    """On resume, advance the data stream past the problems the checkpoint already trained on
    (the stream is a pure function of its seed, so the resumed run sees what the first would have)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = out_dir / "checkpoint" / "state.pt"
    if state.exists():
        done = torch.load(state, weights_only=False)["step"]
        for _ in range(done * cfg.batch_size):
            next(stream)


def _card(cfg: RecipeConfig, model, kind: str, data: str, metrics: dict, result: dict, **extra) -> dict:
    """The card every zoo model ships with: what it is, its data, recipe, metrics and history."""
    return {"name": cfg.name, "kind": kind, "parameters": _n_params(model), **extra, "data": data,
            "recipe": asdict(cfg), "metrics": metrics, "history": result["history"],
            "reproduce": f"ponder zoo train {cfg.name}"}


def _save(model, tokenizer, out_dir: Path, card: dict, dtype=torch.bfloat16) -> None:
    """Write weights (bf16 safetensors), tokenizer and card atomically into `out_dir`."""
    tmp = out_dir.with_name(out_dir.name + ".saving")
    shutil.rmtree(tmp, ignore_errors=True)
    if hasattr(model, "save_pretrained"):
        model.to(dtype).save_pretrained(tmp, safe_serialization=True)
        model.to(torch.float32)
    else:  # ponder's own modules (verifier heads) write their folder themselves
        model.save(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    ckpt = out_dir / "checkpoint"
    if out_dir.exists():
        for child in out_dir.iterdir():
            if child != ckpt:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    for child in tmp.iterdir():
        os.replace(child, out_dir / child.name)
    tmp.rmdir()
    shutil.rmtree(ckpt, ignore_errors=True)


def _as_shipped(model, dtype=torch.bfloat16):
    """Round the weights to the dtype they ship in (and back), so card metrics describe the
    weights a user loads, not the float32 ones training ended with."""
    return model.to(dtype).to(torch.float32)


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- evaluation helpers ---------------------------------------------------------------------------


@torch.no_grad()
def greedy_completions(model, tokenizer, prompts: list[str], max_new_tokens: int = 64,
                       batch_size: int = 64) -> list[str]:
    """Greedy completions with HF `generate` (the recipes' own check; ponder's decoder is tested
    against exactly this in the test suite)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


@torch.no_grad()
def sampled_completions(model, tokenizer, prompts: list[str], temperature: float, seed: int,
                        max_new_tokens: int = 64, batch_size: int = 64) -> list[str]:
    torch.manual_seed(seed)
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                             top_k=0, top_p=1.0, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def accuracy(prompts: list[str], completions: list[str]) -> float:
    return sum(arith.is_correct(p, c) for p, c in zip(prompts, completions)) / max(1, len(prompts))


# ---- recipes --------------------------------------------------------------------------------------


def train_target(out_dir: Path, cfg: RecipeConfig, log=print, eval_count: int = 128,
                 metrics_count: int = 500) -> dict:
    """Stage 1: `cfg.steps` from scratch, saved as shipped (bf16) into ``<out_dir>.stage1``.
    Stage 2 (when `cfg.continue_steps`): continue from those weights on the stream's next problems.
    Each stage checkpoints and resumes after a kill; the stage-1 folder is removed at the end."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    tokenizer = arith.build_tokenizer()
    acfg = arith.ArithConfig(**cfg.arith)
    heldout = [p.prompt for p in arith.problems("heldout", eval_count, seed=cfg.seed, template="Q", cfg=acfg)]

    def run_stage(model, stage_cfg: RecipeConfig, stage_dir: Path, skip_problems: int) -> dict:
        stream = arith.train_stream(cfg.seed, acfg)
        for _ in range(skip_problems):  # the problems the previous stage trained on
            next(stream)

        def loss_fn(step):
            batch = [next(stream) for _ in range(stage_cfg.batch_size)]
            b = lm_batch(tokenizer, [(p.prompt, p.solution()) for p in batch])
            out = model(**b)
            return out.loss, int(b["attention_mask"].sum())

        def evaluate():
            return {"heldout_greedy_acc": round(accuracy(heldout, greedy_completions(model, tokenizer, heldout)), 4)}

        _skip_trained(stream, stage_dir, stage_cfg)  # resume: skip what the checkpoint trained on
        return _train_loop(model, stage_cfg, stage_dir, loss_fn, evaluate, log)

    data = ("ponder.modalities.text.arith train split (generated; held-out expressions excluded by hash); "
            f"{cfg.arith['rewrite_prob']:.0%} of problems in the copy-heavy R template")
    kind = "LlamaForCausalLM (target)"
    stage1 = out_dir.with_name(out_dir.name + ".stage1") if cfg.continue_steps else out_dir
    if cfg.continue_steps and (stage1 / "card.json").is_file():
        model = LlamaForCausalLM.from_pretrained(stage1, local_files_only=True, dtype=torch.float32)
        result = {"history": json.loads((stage1 / "card.json").read_text())["history"]}
        log(f"[{cfg.name}] stage 1 found in {stage1}")
    else:
        model = LlamaForCausalLM(llama_config(cfg, tokenizer))
        result = run_stage(model, cfg, stage1, 0)
        _as_shipped(model)
        if not cfg.continue_steps:
            metrics = target_metrics(model, tokenizer, acfg, cfg.seed, metrics_count)
            card = _card(cfg, model, kind, data, metrics, result)
            _save(model, tokenizer, out_dir, card)
            return card
        _save(model, tokenizer, stage1, _card(cfg, model, kind, data, {}, result))
    stage2 = RecipeConfig(**{**asdict(cfg), "steps": cfg.continue_steps, "lr": cfg.continue_lr,
                             "continue_steps": 0})
    second = run_stage(model.train(), stage2, out_dir, cfg.steps * cfg.batch_size)
    _as_shipped(model)
    metrics = target_metrics(model, tokenizer, acfg, cfg.seed, metrics_count)
    history = result["history"] + [{**h, "step": h["step"] + cfg.steps, "stage": 2} for h in second["history"]]
    card = _card(cfg, model, kind, data, metrics, {"history": history})
    _save(model, tokenizer, out_dir, card)
    shutil.rmtree(stage1, ignore_errors=True)
    return card


def target_metrics(model, tokenizer, acfg, seed: int, count: int = 500) -> dict:
    heldout = [p.prompt for p in arith.problems("heldout", count, seed=seed + 1, template="Q", cfg=acfg)]
    rewrite = [p.prompt for p in arith.problems("heldout", count // 2, seed=seed + 1, template="R", cfg=acfg)]
    return {
        "eval_problems": count,
        "heldout_greedy_acc": round(accuracy(heldout, greedy_completions(model, tokenizer, heldout)), 4),
        "heldout_sample_acc_t1.0": round(
            accuracy(heldout, sampled_completions(model, tokenizer, heldout, 1.0, seed)), 4),
        "heldout_sample_acc_t0.7": round(
            accuracy(heldout, sampled_completions(model, tokenizer, heldout, 0.7, seed)), 4),
        "heldout_rewrite_greedy_acc": round(
            accuracy(rewrite, greedy_completions(model, tokenizer, rewrite)), 4),
    }


def _load_target(target_dir: Path):
    from transformers import AutoTokenizer, LlamaForCausalLM

    if not (target_dir / "config.json").is_file():
        raise FileNotFoundError(f"the target {target_dir} is not trained yet: run `ponder zoo train arith` first")
    tokenizer = AutoTokenizer.from_pretrained(target_dir, local_files_only=True)
    model = LlamaForCausalLM.from_pretrained(target_dir, local_files_only=True, dtype=torch.float32).eval()
    return model, tokenizer


def train_draft(out_dir: Path, cfg: RecipeConfig, target_dir: Path, log=print, eval_count: int = 200) -> dict:
    """Distil a one-layer draft from the target: KL(p_target || p_draft) on arith text + data CE."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    target, tokenizer = _load_target(target_dir)
    for p in target.parameters():
        p.requires_grad_(False)
    model = LlamaForCausalLM(llama_config(cfg, tokenizer))
    acfg = arith.ArithConfig(**cfg.arith)
    stream = arith.train_stream(cfg.seed + 7, acfg)

    def loss_fn(step):
        batch = [next(stream) for _ in range(cfg.batch_size)]
        b = lm_batch(tokenizer, [(p.prompt, p.solution()) for p in batch])
        with torch.no_grad():
            teacher = target(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits  # [B, T, V]
        out = model(**b)
        keep = b["labels"][:, 1:] != -100  # [B, T-1] positions that predict a completion token
        student_logp = F.log_softmax(out.logits[:, :-1][keep], -1)  # [N, V]
        teacher_logp = F.log_softmax(teacher[:, :-1][keep], -1)  # [N, V]
        kl = F.kl_div(student_logp, teacher_logp, log_target=True, reduction="batchmean")
        return kl + 0.5 * out.loss, int(keep.sum())

    _skip_trained(stream, out_dir, cfg)
    result = _train_loop(model, cfg, out_dir, loss_fn, None, log)
    _as_shipped(model)
    metrics = {"greedy_agreement_with_target": round(draft_agreement(model, target, tokenizer, acfg, cfg.seed,
                                                                     eval_count), 4)}
    prompts = [p.prompt for p in arith.problems("heldout", eval_count, seed=cfg.seed + 1, template="Q", cfg=acfg)]
    metrics["heldout_greedy_acc"] = round(accuracy(prompts, greedy_completions(model, tokenizer, prompts)), 4)
    card = _card(cfg, model, "LlamaForCausalLM (draft, distilled from arith)",
                 "arith train split; teacher = the arith target's next-token distribution", metrics, result,
                 target="arith")
    _save(model, tokenizer, out_dir, card)
    return card


@torch.no_grad()
def draft_agreement(draft, target, tokenizer, acfg, seed: int, count: int) -> float:
    """Share of positions along the target's greedy completions where the draft's argmax agrees."""
    prompts = [p.prompt for p in arith.problems("heldout", count, seed=seed + 2, template=None, cfg=acfg)]
    completions = greedy_completions(target, tokenizer, prompts)
    b = lm_batch(tokenizer, list(zip(prompts, completions)))
    keep = b["labels"][:, 1:] != -100
    t = target(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].argmax(-1)
    d = draft(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].argmax(-1)
    return float((t == d)[keep].float().mean())


SMOKE_SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
               "batch_size": 4}


def recipe_config(cfg, smoke_shape: dict, steps: int | None, smoke: bool, also: tuple[str, ...] = ()):
    """A recipe's config for a run: `cfg` with the smoke shape (smoke), and a step count (`steps`, 2
    for a smoke run) evaluated and checkpointed once, at the end; the fields named in `also` take
    that step count too. A fresh config of `cfg`'s class (nested fields copied)."""
    overrides = dict(smoke_shape) if smoke else {}
    if steps is not None or smoke:
        steps = steps or 2
        overrides.update(steps=steps, eval_every=max(1, steps), **dict.fromkeys(also, steps))
    return type(cfg)(**{**asdict(cfg), **overrides})


def train(name: str, zoo_dir: Path, log=print, steps: int | None = None, smoke: bool = False) -> dict:
    """Train zoo model `name` into ``zoo_dir/name``.

    steps: override the recipe's step count. smoke: a tiny model, few evaluation problems — the
    whole recipe end to end in seconds (tests); its weights are for shape checks only.
    """
    if name not in RECIPES:
        raise KeyError(name)
    cfg = RECIPES[name]
    cfg = recipe_config(cfg, SMOKE_SHAPE, steps, smoke, also=("continue_steps",) if cfg.continue_steps else ())
    count = 8 if smoke else None
    out = zoo_dir / name
    if name == "arith":
        return train_target(out, cfg, log, **({"eval_count": count} if smoke else {}), metrics_count=count or 500)
    return train_draft(out, cfg, zoo_dir / "arith", log, **({"eval_count": count} if smoke else {}))
