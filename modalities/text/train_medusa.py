"""Recipe for ``zoo:arith-medusa`` (`ponder zoo train arith-medusa`): Medusa heads on the frozen arith target.

Medusa-1 (Cai et al. 2024) with self-distillation: the target stays frozen; head k at position t
learns the target's own next-token distribution at position t+k (KL to it, plus half the data
cross-entropy on token t+k+1), on arith training text, each head's loss weighted 0.8^(k-1). The
heads' projections start from the target's LM head and their residual blocks from zero. Seeded, a
fixed number of steps, checkpointed and resumable (the text recipes' loop), one CPU core in minutes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ponder.modalities.text import arith
from ponder.modalities.text.medusa import MedusaHeads
from ponder.modalities.text.train import _load_target, _skip_trained, _train_loop, lm_batch


@dataclass
class MedusaConfig:
    """The recipe's hyper-parameters (the fields the text recipes' training loop reads, plus heads)."""

    name: str = "arith-medusa"
    num_heads: int = 4
    steps: int = 250
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    weight_decay: float = 0.0
    eval_every: int = 125
    head_decay: float = 0.8  # head k's loss weight: head_decay ** (k - 1)
    arith: dict = field(default_factory=lambda: asdict(arith.ArithConfig()))


def _teacher(target, batch):
    """Frozen target: final hidden [B, T, H] and next-token log-probs [B, T, V]."""
    with torch.no_grad():
        out = target(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return out.hidden_states[-1], F.log_softmax(out.logits.float(), -1)


def head_losses(heads: MedusaHeads, hidden, teacher_logp, batch) -> list[tuple[torch.Tensor, int]]:
    """Per head k: (loss, positions). Head k at t vs the target's distribution at t+k (KL) and the
    data token t+k+1 (CE), over positions whose token t+k+1 is a completion token (or EOS)."""
    logits = heads(hidden)  # [B, T, K, V]
    labels = batch["labels"]  # [B, T]
    out = []
    for k in range(1, heads.num_heads + 1):
        span = labels.shape[1] - k - 1
        if span <= 0:
            out.append((logits.sum() * 0, 0))
            continue
        keep = labels[:, k + 1:] != -100  # [B, T-k-1]
        student = F.log_softmax(logits[:, :span, k - 1][keep], -1)  # [N, V]
        teacher = teacher_logp[:, k:k + span][keep]  # [N, V]
        kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
        ce = F.nll_loss(student, labels[:, k + 1:][keep])
        out.append((kl + 0.5 * ce, int(keep.sum())))
    return out


@torch.no_grad()
def head_agreement(heads: MedusaHeads, target, tokenizer, acfg, seed: int, count: int) -> dict:
    """Per head: share of held-out completion positions where its argmax equals the target's greedy
    choice there; and the mean greedy chain length those heads would get accepted (tokens per step)."""
    from ponder.modalities.text.train import greedy_completions

    prompts = [p.prompt for p in arith.problems("heldout", count, seed=seed + 3, template=None, cfg=acfg)]
    batch = lm_batch(tokenizer, list(zip(prompts, greedy_completions(target, tokenizer, prompts))))
    hidden, teacher = _teacher(target, batch)
    logits = heads(hidden)  # [B, T, K, V]
    greedy = teacher.argmax(-1)  # [B, T] the target's choice for token t+1
    labels = batch["labels"]
    agree, chain = {}, torch.ones(labels.shape[0], labels.shape[1] - heads.num_heads - 1, dtype=torch.bool)
    accepted = torch.zeros(chain.shape)
    for k in range(1, heads.num_heads + 1):
        span = chain.shape[1]
        keep = labels[:, k + 1:k + 1 + span] != -100  # [B, span]
        hit = logits[:, :span, k - 1].argmax(-1) == greedy[:, k:k + span]  # [B, span]
        agree[f"head{k}_top1_agreement"] = round(float(hit[keep].float().mean()), 4)
        chain &= hit | ~keep
        accepted += (chain & keep).float()
    rows = labels[:, 1:1 + chain.shape[1]] != -100
    agree["mean_tokens_per_step_greedy_chain"] = round(1 + float(accepted[rows].mean()), 4)
    return agree


def train(name: str, zoo_dir: Path, log=print, steps: int | None = None, smoke: bool = False) -> dict:
    """Train Medusa heads for the zoo target into ``zoo_dir/name``; returns the card.

    steps: override the step count. smoke: 2 steps (or `steps`), few evaluation problems.
    """
    cfg = MedusaConfig(name=name)
    if steps is not None or smoke:
        steps = steps or 2
        cfg = MedusaConfig(name=name, steps=steps, eval_every=max(1, steps), batch_size=4 if smoke else cfg.batch_size)
    out_dir = zoo_dir / name
    target_dir = zoo_dir / "arith"
    torch.manual_seed(cfg.seed)
    target, tokenizer = _load_target(target_dir)
    for p in target.parameters():
        p.requires_grad_(False)
    heads = MedusaHeads(target.config.hidden_size, target.config.vocab_size, cfg.num_heads, target="arith", name=name)
    heads.init_from_lm_head(target.get_output_embeddings().weight)
    acfg = arith.ArithConfig(**cfg.arith)
    stream = arith.train_stream(cfg.seed + 13, acfg)
    weights = [cfg.head_decay ** k for k in range(cfg.num_heads)]

    def loss_fn(step):
        batch = lm_batch(tokenizer, [(p.prompt, p.solution()) for p in (next(stream) for _ in range(cfg.batch_size))])
        hidden, teacher = _teacher(target, batch)
        losses = head_losses(heads, hidden, teacher, batch)
        return sum(w * loss for w, (loss, _) in zip(weights, losses)), losses[0][1]

    count = 8 if smoke else 64

    def evaluate():
        return head_agreement(heads, target, tokenizer, acfg, cfg.seed, count)

    _skip_trained(stream, out_dir, cfg)
    result = _train_loop(heads, cfg, out_dir, loss_fn, evaluate, log)
    heads.to(torch.bfloat16).to(torch.float32)  # card metrics describe the shipped (bf16) weights
    metrics = evaluate()
    metrics["eval_problems"] = count
    card = {"name": name, "kind": "MedusaHeads (draft heads for zoo:arith)", "target": "arith",
            "parameters": sum(p.numel() for p in heads.parameters()),
            "data": "arith train split; teacher = the frozen arith target's next-token distributions",
            "recipe": asdict(cfg), "metrics": metrics, "history": result["history"],
            "reproduce": f"ponder zoo train {name}"}
    heads.save(out_dir, card)
    import shutil

    shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)
    return card
