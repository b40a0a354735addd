"""Recipe for ``zoo:arith-chimera`` (`ponder zoo train arith-chimera`): a Chimera draft on the frozen arith target.

Distillation from the target's own outputs (Chimera, Zeng et al. 2024; EAGLE, Li et al. 2024): the
target writes completions of arith train problems (most greedy, some sampled at T = 1, so the draft
sees the target's own mistakes), and one forward over each gives its final hidden states h_j. The
draft is trained on those pairs with `ChimeraDraft.unrolled`: `depth` drafting passes, pass d reading
pass d-1's predicted states (training-time test). The first `shallow_steps` steps train pass 1 alone,
five times cheaper, since what every depth needs is learnt there first. The loss is a soft
cross-entropy to the target's next-token distribution at every drafted position plus a small
smooth-L1 pull of the predicted state toward the real h; pass d's loss is weighted
depth_decay^(d-1). The target's completions and states are computed once and kept beside the
checkpoint, so a killed run resumes without redoing them.

Seeded, a fixed number of steps, checkpointed and resumable (the text recipes' loop). The card's
held-out figures: per-depth top-1 agreement with the target along its greedy completions (teacher
forced), and the tokens per target call of `--decoder chimera` (chain and sparse tree) at draft length
5, batch 1, T = 0, on held-out Q problems. About 14 minutes on one CPU thread (8 of them the
distillation set).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ponder.modalities.text import arith
from ponder.modalities.text.chimera import ChimeraDraft
from ponder.modalities.text.train import (
    _load_target,
    _train_loop,
    greedy_completions,
    lm_batch,
    recipe_config,
    sampled_completions,
)


@dataclass
class ChimeraConfig:
    """The recipe's hyper-parameters (the fields the text recipes' training loop reads, plus the draft's)."""

    name: str = "arith-chimera"
    width: int = 128  # the fusion layer's width (the target's is 384): cheap to train and to run
    num_heads: int = 4
    intermediate_size: int = 384
    depth: int = 5  # drafting passes unrolled in training: the draft length it is trained for
    shallow_steps: int = 650  # the first steps train pass 1 only (5x cheaper; what every depth shares)
    depth_decay: float = 0.9  # pass d's loss weight depth_decay ** (d - 1): every depth counts for acceptance
    feature_weight: float = 0.1  # smooth-L1 on predicted states beside the distillation cross-entropy
    data_problems: int = 2560  # train problems the target completes once (the distillation set)
    sampled_frac: float = 0.25  # share of them sampled at T = 1 (the rest greedy)
    steps: int = 900
    batch_size: int = 32
    lr: float = 6e-3
    seed: int = 0
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.05
    weight_decay: float = 0.0
    eval_every: int = 250
    agreement_problems: int = 128  # held-out problems (mixed templates) for the per-depth agreement
    eval_problems: int = 100  # held-out Q problems decoded with --decoder chimera for the card
    tree_width: int = 3  # the card's tree row
    max_new_tokens: int = 64
    arith: dict = field(default_factory=lambda: asdict(arith.ArithConfig()))


SMOKE = {"width": 16, "num_heads": 2, "intermediate_size": 32, "depth": 3, "shallow_steps": 1, "data_problems": 8,
         "batch_size": 4, "agreement_problems": 4, "eval_problems": 2, "max_new_tokens": 16}


# ---- the distillation set: the target's completions and its hidden states ---------------------------


@torch.no_grad()
def target_states(target, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 64) -> dict:
    """The target's final hidden states along (prompt, completion) pairs (EOS appended).

    Returns {"ids": [N, T] long (pad 0), "hidden": [N, T, H] float16, "lengths": [N], "prompt_lengths": [N]}.
    """
    chunks = []
    for i in range(0, len(pairs), batch_size):
        batch = lm_batch(tokenizer, pairs[i:i + batch_size])
        out = target(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        chunks.append((batch, out.hidden_states[-1].to(torch.float16)))  # what the LM head reads
    width = max(b["input_ids"].shape[1] for b, _ in chunks)
    ids = torch.cat([F.pad(b["input_ids"], (0, width - b["input_ids"].shape[1])) for b, _ in chunks])
    hidden = torch.cat([F.pad(h, (0, 0, 0, width - h.shape[1])) for _, h in chunks])
    lengths = torch.cat([b["attention_mask"].sum(1) for b, _ in chunks])
    prompt_lengths = torch.cat([(b["labels"] == -100).logical_and(b["attention_mask"] == 1).sum(1)
                                for b, _ in chunks])
    return {"ids": ids, "hidden": hidden, "lengths": lengths, "prompt_lengths": prompt_lengths}


def distillation_set(target, tokenizer, cfg: ChimeraConfig, acfg, path: Path, log, target_sha: str = "") -> dict:
    """The target's completions of `cfg.data_problems` train problems and its states along them;
    cached at `path` (written atomically) so a resumed run reuses them (same recipe fields and target)."""
    key = {k: v for k, v in asdict(cfg).items() if k in ("data_problems", "sampled_frac", "seed", "max_new_tokens",
                                                          "arith")}
    key["target_weights_sha256"] = target_sha
    if path.is_file():
        data = torch.load(path, weights_only=False)
        if data.get("key") == key:
            log(f"[{cfg.name}] reusing the distillation set in {path}")
            return data
    t0 = time.time()
    stream = arith.train_stream(cfg.seed + 17, acfg)
    prompts = [next(stream).prompt for _ in range(cfg.data_problems)]
    n_sampled = int(round(cfg.sampled_frac * len(prompts)))
    greedy = prompts[:len(prompts) - n_sampled]
    completions = []
    for i in range(0, len(greedy), 256):
        completions += greedy_completions(target, tokenizer, greedy[i:i + 256], max_new_tokens=cfg.max_new_tokens)
        log(f"[{cfg.name}] target completions {len(completions)}/{len(prompts)}")
    if n_sampled:
        completions += sampled_completions(target, tokenizer, prompts[len(greedy):], 1.0, cfg.seed + 17,
                                           max_new_tokens=cfg.max_new_tokens)
    data = target_states(target, tokenizer, list(zip(prompts, completions)))
    data["key"] = key
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    log(f"[{cfg.name}] distillation set: {len(prompts)} completions, {int(data['lengths'].sum())} positions, "
        f"{time.time() - t0:.0f} s")
    return data


def batches_of_epoch(lengths: torch.Tensor, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """One epoch's batches: a seeded shuffle, sorted by length within groups of 8 batches (less padding)."""
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(len(lengths), generator=gen)
    group = 8 * batch_size
    out = []
    for i in range(0, len(order), group):
        chunk = order[i:i + group]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        out += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size) if len(chunk[j:j + batch_size])]
    perm = torch.randperm(len(out), generator=gen)
    return [out[int(k)] for k in perm]


# ---- losses and held-out figures --------------------------------------------------------------------


def drafted_positions(lengths: torch.Tensor, prompt_lengths: torch.Tensor, width: int, depth: int) -> torch.Tensor:
    """[B, T] bool: pass `depth`'s position j is one drafting reaches — the target's states end at
    c = j - depth + 1 >= the last prompt position, and the token it predicts (x_{j+2}) exists."""
    j = torch.arange(width)[None, :]
    return (j - depth + 1 >= prompt_lengths[:, None] - 1) & (j + 2 <= lengths[:, None] - 1)


def depth_losses(draft: ChimeraDraft, batch: dict, depth: int, feature_weight: float):
    """Per drafting depth d: (loss, top-1 hits, positions). The loss is the soft cross-entropy of the
    draft's logits to the target's next-token distribution there, plus feature_weight times the
    smooth-L1 distance of the predicted state to the target's."""
    ids, hidden = batch["ids"], batch["hidden"].float()  # [B, T], [B, T, H]
    width = ids.shape[1]
    outs = draft.unrolled(hidden, ids, depth, first=max(0, int(batch["prompt_lengths"].min()) - 1))
    with torch.no_grad():
        teacher = F.log_softmax(draft.lm_head(hidden[:, 1:]), -1)  # [B, T-1, V]: the target at j + 1
    result = []
    for d, (logits, predicted) in enumerate(outs, start=1):
        keep = drafted_positions(batch["lengths"], batch["prompt_lengths"], width, d)[:, :-1]  # [B, T-1]
        student = F.log_softmax(logits[:, :-1][keep].float(), -1)  # [N, V]
        target_logp = teacher[keep]  # [N, V]
        ce = -(target_logp.exp() * student).sum(-1).mean()
        pull = F.smooth_l1_loss(predicted[:, :-1][keep], hidden[:, 1:][keep])
        hits = int((student.argmax(-1) == target_logp.argmax(-1)).sum())
        result.append((ce + feature_weight * pull, hits, int(keep.sum())))
    return result


def _slice(data: dict, index: torch.Tensor) -> dict:
    width = int(data["lengths"][index].max())
    return {"ids": data["ids"][index, :width], "hidden": data["hidden"][index, :width],
            "lengths": data["lengths"][index], "prompt_lengths": data["prompt_lengths"][index]}


@torch.no_grad()
def depth_agreement(draft: ChimeraDraft, data: dict, depth: int) -> dict:
    """Per depth d: share of drafted positions along the target's held-out greedy completions where the
    draft's top-1 (its d-th draft, earlier drafts right) equals the target's greedy token."""
    hits, total = [0] * depth, [0] * depth
    for start in range(0, len(data["lengths"]), 64):
        batch = _slice(data, torch.arange(start, min(start + 64, len(data["lengths"]))))
        for d, (_, h, n) in enumerate(depth_losses(draft, batch, depth, 0.0)):
            hits[d] += h
            total[d] += n
    return {f"depth{d + 1}_top1_agreement": round(hits[d] / max(1, total[d]), 4) for d in range(depth)}


@torch.no_grad()
def decoded_figures(draft: ChimeraDraft, target, tokenizer, prompts: list[str], max_new_tokens: int,
                    tree_width: int, draft_len: int = 5) -> dict:
    """Tokens per target call of --decoder chimera (chain, and a sparse tree of width `tree_width`) at
    `draft_len`, batch 1, T = 0 over `prompts` (that it equals plain greedy is the tests' job)."""
    from ponder.kernels.sampling import SamplingParams
    from ponder.modalities.text.model import TextModel
    from ponder.search.decoding.chimera import chimera

    model = TextModel(target, tokenizer, name="arith")
    greedy = SamplingParams(temperature=0.0)
    figures = {}
    for label, width in (("chain", 1), ("tree", tree_width)):
        tokens = calls = steps = accepted = 0
        t0 = time.time()
        for prompt in prompts:
            ids = [model.encode(prompt)]
            stats: dict = {}
            out = chimera(model, ids, sampling=greedy, max_new_tokens=max_new_tokens, draft=draft,
                          draft_len=draft_len, tree_width=width, stats=stats)
            tokens += len(out.tokens[0])
            calls += out.compute.model_calls
            steps += stats["row_steps"]
            accepted += stats["accepted"]
        figures[f"{label}_tokens_per_target_call"] = round(tokens / calls, 4)
        figures[f"{label}_mean_accepted_len"] = round(1 + accepted / max(1, steps), 4)
        figures[f"{label}_seconds"] = round(time.time() - t0, 1)
    figures.update(draft_len=draft_len, tree_width=tree_width, eval_problems=len(prompts), template="Q",
                   temperature=0.0, batch=1, max_new_tokens=max_new_tokens)
    return figures


def heldout_prompts(count: int, seed: int, acfg, template: str | None = "Q") -> list[str]:
    return [p.prompt for p in arith.problems("heldout", count, seed=seed + 3, template=template, cfg=acfg)]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---- the recipe -------------------------------------------------------------------------------------


def train(name: str, zoo_dir: Path, log=print, steps: int | None = None, smoke: bool = False) -> dict:
    """Train a Chimera draft for the zoo target into ``zoo_dir/name``; returns the card.

    steps: override the step count. smoke: a tiny draft, 2 steps (or `steps`), few problems.
    """
    cfg = recipe_config(ChimeraConfig(name=name), SMOKE, steps, smoke)
    t0 = time.time()
    out_dir = zoo_dir / name
    target_dir = zoo_dir / "arith"
    torch.manual_seed(cfg.seed)
    target, tokenizer = _load_target(target_dir)
    for p in target.parameters():
        p.requires_grad_(False)
    draft = ChimeraDraft(target.config.hidden_size, target.config.vocab_size, width=cfg.width,
                         num_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size, target="arith", name=name)
    draft.init_from_target(target.get_input_embeddings().weight, target.get_output_embeddings().weight)
    acfg = arith.ArithConfig(**cfg.arith)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = out_dir / "distill-data.pt"
    target_sha = file_sha256(target_dir / "model.safetensors")
    data = distillation_set(target, tokenizer, cfg, acfg, data_path, log, target_sha)
    distill_seconds = round(time.time() - t0, 1)
    agreement_prompts = heldout_prompts(cfg.agreement_problems, cfg.seed + 1, acfg, template=None)
    agreement_completions = greedy_completions(target, tokenizer, agreement_prompts, max_new_tokens=cfg.max_new_tokens)
    heldout = target_states(target, tokenizer, list(zip(agreement_prompts, agreement_completions)))
    weights = [cfg.depth_decay ** d for d in range(cfg.depth)]
    epochs: dict[int, list[torch.Tensor]] = {}

    def loss_fn(step):
        per_epoch = -(-len(data["lengths"]) // cfg.batch_size)
        epoch = step // per_epoch
        if epoch not in epochs:  # a pure function of (seed, epoch): a resumed run sees the same batches
            epochs.clear()
            epochs[epoch] = batches_of_epoch(data["lengths"], cfg.batch_size, cfg.seed, epoch)
        batch = _slice(data, epochs[epoch][step % len(epochs[epoch])])
        depth = 1 if step < cfg.shallow_steps else cfg.depth
        losses = depth_losses(draft, batch, depth, cfg.feature_weight)
        return sum(w * loss for w, (loss, _, _) in zip(weights, losses)), losses[0][2]

    def evaluate():
        return depth_agreement(draft, heldout, cfg.depth)

    result = _train_loop(draft, cfg, out_dir, loss_fn, evaluate, log)
    draft.to(torch.bfloat16).to(torch.float32)  # card metrics describe the shipped (bf16) weights
    metrics = depth_agreement(draft, heldout, cfg.depth)
    metrics["agreement_problems"] = cfg.agreement_problems
    metrics.update(decoded_figures(draft, target, tokenizer, heldout_prompts(cfg.eval_problems, cfg.seed, acfg),
                                   cfg.max_new_tokens, cfg.tree_width))
    log(f"[{name}] held-out: {metrics}")
    card = {"name": name, "kind": "ChimeraDraft (autoregressive draft over zoo:arith's hidden states)",
            "target": "arith", "target_weights_sha256": target_sha,
            "parameters": sum(p.numel() for p in draft.parameters()),
            "trained_parameters": sum(p.numel() for p in draft.parameters() if p.requires_grad),
            "data": (f"the arith target's own completions of {cfg.data_problems} train problems "
                     f"({1 - cfg.sampled_frac:.0%} greedy, {cfg.sampled_frac:.0%} sampled at T=1) and its final "
                     "hidden states along them"),
            "heldout": ("agreement: held-out problems (both templates) along the target's greedy completions; "
                        "tokens per target call: held-out Q problems (seed + 3 of arith.problems), "
                        "--decoder chimera vs the same prompts' target calls (prefill included)"),
            "recipe": asdict(cfg), "metrics": metrics, "history": result["history"],
            "train_seconds_this_run": result["train_seconds_this_run"],
            "distill_seconds_this_run": distill_seconds, "recipe_seconds_this_run": round(time.time() - t0, 1),
            "reproduce": f"ponder zoo train {name}"}
    draft.save(out_dir, card)
    shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)
    data_path.unlink(missing_ok=True)
    return card
