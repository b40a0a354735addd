"""Recipes for the arith verifiers (`ponder zoo train prm`, `ponder zoo train orm`).

Both learn from the target's own mistakes: every training problem (train split) is sampled from
zoo:arith once at each of several temperatures, and each sample is labelled exactly —
`arith.step_labels` checks every line (is ``a op b = c`` right, and is it the operation that follows
from the previous line's state; once a line is wrong every later one is wrong), `arith.is_correct`
checks the answer. The reference solution of a quarter of the problems joins the PRM's data (late
right steps are rare in a weak target's samples); every problem's reference joins its ORM group.

Both are heads on the frozen target (`verifier_head.VerifierHead`: the target's last hidden state
and its log-probability, entropy and top log-probability at every token, one causal transformer
layer, one logit per token); only the head ships.

* ``prm`` — read at the newline that ends each step = P(this step and all before it are right).
  Binary cross-entropy with the positive class weighted by the negatives / positives ratio, so the
  0.5 threshold is the balanced decision; and at every character of a line, whether the line so far
  is a prefix of the right one (the position of the first wrong digit: dense supervision of the
  check itself).
* ``orm`` — read at the last token = P(answer right). Trained listwise within a problem (a softmax
  over the problem's group — its reference and its samples — pushes the right ones above the wrong
  ones of *the same problem*: the comparison best-of-N makes), plus a class-weighted cross-entropy
  that keeps the score a probability, plus the PRM's dense step and character labels at every other
  token as an auxiliary loss (without it the ORM ranked within a problem at AUROC 0.60 and picked
  worse than a random sample: 0.946x).

Held-out figures are measured on the target's T=1 samples of held-out problems (8 per problem): the
PRM's balanced step accuracy (the mean of its accuracy on right steps and on wrong steps), and
for both the accuracy of the verifier's best-of-8 pick against a random sample's. The sample pools
are cached in the output folder's checkpoint, so a resumed run does not sample again.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from ponder.modalities.text import arith
from ponder.modalities.text.train import (
    SMOKE_SHAPE,
    RecipeConfig,
    _card,
    _load_target,
    _save,
    _train_loop,
    recipe_config,
    sampled_completions,
)
from ponder.modalities.text.verifier_head import VerifierHead

RECIPES = {
    # Heads on the frozen target (`verifier_head`): hidden_size / num_attention_heads / intermediate_size
    # are the head layer's width, attention heads and feed-forward width.
    "orm": RecipeConfig("orm", 128, 512, 1, 4, steps=3000, batch_size=30, lr=1e-3, eval_every=1000,
                        weight_decay=0.01),
    "prm": RecipeConfig("prm", 128, 512, 1, 4, steps=4000, batch_size=32, lr=1e-3, eval_every=1000,
                        weight_decay=0.01),
}
TEMPERATURES = (0.5, 0.8, 1.0, 1.3)  # training samples: one per problem at each
EVAL_TEMPERATURE = 1.0
EVAL_SAMPLES = 8  # per held-out problem (best-of-8)
REFERENCE_SHARE = 0.25  # PRM: share of problems whose reference solution joins the data
CHAR_WEIGHT = 0.3  # PRM: loss weight of each character's prefix label (a step's newline weighs 1)


def sample_pool(target, tokenizer, problems: list[arith.Problem], temperatures, per_temperature: int,
                seed: int, log) -> list[dict]:
    """The target's samples of every problem: `per_temperature` at each temperature, labelled."""
    rows = []
    prompts = [p.prompt for p in problems]
    for ti, t in enumerate(temperatures):
        for k in range(per_temperature):
            outs = sampled_completions(target, tokenizer, prompts, t, seed=seed * 1000 + ti * 100 + k)
            for i, (prompt, out) in enumerate(zip(prompts, outs)):
                rows.append({"problem": i, "prompt": prompt, "completion": out, "T": t,
                             "correct": arith.is_correct(prompt, out),
                             "steps": arith.step_labels(prompt, out)})
            log(f"[verifiers] sampled {len(prompts)} problems at T={t} ({k + 1}/{per_temperature})")
    return rows


def char_labels(prompt: str, completion: str) -> list[list[bool]]:
    """Per non-empty line, one label per character and one for its newline: is the line so far a
    prefix of the right line (with every earlier line right)? The newline's label is the step's."""
    problem = arith.parse_prompt(prompt)
    ref = problem.solution().strip("\n").split("\n") if problem is not None else []
    out, ok = [], True
    for i, line in enumerate(ln for ln in completion.split("\n") if ln.strip()):
        right = ref[i] if ok and i < len(ref) else None
        chars = [right is not None and right.startswith(line[: j + 1].strip()) for j in range(len(line))]
        ok = right is not None and line.strip() == right
        out.append(chars + [ok])
    return out


def dense_targets(shape, batch, ends, tokenizer, pos_weight, char_weight: float = CHAR_WEIGHT):
    """Targets and weights [B, T] for the PRM: each step's newline (weight `pos_weight` when right,
    1 when wrong, so the 0.5 threshold is the balanced decision) and, where a line tokenises one
    token per character (the arith tokenizer), each of its characters with `char_weight` — the
    position of the first wrong digit, dense supervision that teaches the check itself."""
    y, w = torch.zeros(shape), torch.zeros(shape)
    for b, ((prompt, completion), ends_b) in enumerate(zip(batch, ends)):
        start = len(tokenizer(prompt)["input_ids"])
        for labels, end in zip(char_labels(prompt, completion), ends_b):
            y[b, end] = float(labels[-1])
            w[b, end] = float(pos_weight) if labels[-1] else 1.0
            if end - start == len(labels) - 1:  # one token per character
                y[b, start:end] = torch.tensor(labels[:-1], dtype=torch.float)
                w[b, start:end] = char_weight
            start = end + 1
    return y, w


def _cached_pool(path: Path, make) -> list[dict]:
    if path.is_file():
        return json.loads(path.read_text())
    rows = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows))
    tmp.replace(path)
    return rows


def _encode(tokenizer, pairs: list[tuple[str, str]]):
    from ponder.modalities.text.verifiers import encode_steps, pad_right

    encoded = [encode_steps(tokenizer, p, c) for p, c in pairs]
    ids, mask = pad_right(tokenizer, [e[0] for e in encoded])
    return ids, mask, [e[1] for e in encoded]


def encode_ends(tokenizer, prompt: str, completion: str) -> list[int]:
    from ponder.modalities.text.verifiers import encode_steps

    return encode_steps(tokenizer, prompt, completion)[1]


@torch.no_grad()
def precompute(model, tokenizer, pairs: list[tuple[str, str]], log, batch_size: int = 64) -> list[torch.Tensor]:
    """The frozen target's features of every (prompt, completion), once ([T_i, F] float16 each):
    training then runs the head alone."""
    out = []
    for i in range(0, len(pairs), batch_size):
        ids, mask, _ = _encode(tokenizer, pairs[i : i + batch_size])
        x = model.features(ids, mask).half()  # [B, T, F]
        out += [x[b, : int(mask[b].sum())] for b in range(x.shape[0])]
        if (i // batch_size) % 20 == 0:
            log(f"[verifiers] target features {i + len(ids)}/{len(pairs)}")
    return out


def _stack(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded features [B, T, F] and mask [B, T]."""
    width = max(r.shape[0] for r in rows)
    x = torch.zeros(len(rows), width, rows[0].shape[-1], dtype=rows[0].dtype)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        x[b, : r.shape[0]] = r
        mask[b, : r.shape[0]] = 1
    return x, mask


def balanced_accuracy(scores: list[float], labels: list[bool]) -> float:
    """Mean of the accuracy (threshold 0.5) on the positives and on the negatives."""
    pos = [s > 0.5 for s, y in zip(scores, labels) if y]
    neg = [s <= 0.5 for s, y in zip(scores, labels) if not y]
    parts = [sum(x) / len(x) for x in (pos, neg) if x]
    return sum(parts) / len(parts) if parts else float("nan")


def pick_metrics(groups: list[list[tuple[float, bool]]]) -> dict:
    """Per problem [(score, correct)]: best-of-n pick accuracy, a random sample's accuracy, coverage,
    and the within-problem AUROC (mean over problems with both right and wrong samples)."""
    picked = sum(max(g, key=lambda x: x[0])[1] for g in groups) / len(groups)
    single = sum(sum(c for _, c in g) / len(g) for g in groups) / len(groups)
    cover = sum(any(c for _, c in g) for g in groups) / len(groups)
    aurocs = []
    for g in groups:
        pos, neg = [s for s, c in g if c], [s for s, c in g if not c]
        if pos and neg:
            aurocs.append(sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg)))
    return {"best_of_n_acc": round(picked, 4), "random_sample_acc": round(single, 4),
            "pick_over_random": round(picked / single, 3) if single else None, "coverage": round(cover, 4),
            "within_problem_auroc": round(sum(aurocs) / len(aurocs), 4) if aurocs else None}


@torch.no_grad()
def heldout_metrics(verifier, pool: list[dict], process: bool) -> dict:
    """A verifier's card figures on a held-out pool (`sample_pool` rows): best-of-n pick vs random,
    within-problem AUROC and, for a process verifier, the balanced step accuracy."""
    by_problem: dict[int, list[dict]] = {}
    for r in pool:
        by_problem.setdefault(r["problem"], []).append(r)
    groups, step_scores, step_labels = [], [], []
    for rows in by_problem.values():
        prompt, outs = rows[0]["prompt"], [r["completion"] for r in rows]
        if process:
            per_step = verifier.step_scores_batch(prompt, outs)
            for s, r in zip(per_step, rows):
                step_scores += s
                step_labels += r["steps"][: len(s)]
            scores = [verifier._reduce(s) for s in per_step]
        else:
            scores = verifier.score(prompt, outs).tolist()
        groups.append([(s, r["correct"]) for s, r in zip(scores, rows)])
    out = {f"heldout_{k}": v for k, v in pick_metrics(groups).items()}
    if process:
        out["heldout_balanced_step_acc"] = round(balanced_accuracy(step_scores, step_labels), 4)
    return out


def train_verifier(out_dir: Path, cfg: RecipeConfig, target_dir: Path, process: bool, log=print,
                   train_problems: int = 1500, eval_problems: int = 150, target_name: str = "arith") -> dict:
    torch.manual_seed(cfg.seed)
    target, tokenizer = _load_target(target_dir)
    acfg = arith.ArithConfig(**cfg.arith)
    cache = out_dir / "checkpoint-data"
    train_probs = arith.problems("train", train_problems, seed=cfg.seed + 11, template=None, cfg=acfg)
    eval_probs = arith.problems("heldout", eval_problems, seed=cfg.seed + 5, template="Q", cfg=acfg)
    with torch.no_grad():
        pool = _cached_pool(cache / "train.json", lambda: sample_pool(
            target, tokenizer, train_probs, TEMPERATURES, 1, cfg.seed, log))
        heldout = _cached_pool(cache / "heldout.json", lambda: sample_pool(
            target, tokenizer, eval_probs, (EVAL_TEMPERATURE,), EVAL_SAMPLES, cfg.seed + 1, log))

    model = VerifierHead(target, "process" if process else "outcome", width=cfg.hidden_size,
                         heads=cfg.num_attention_heads, target_name=target_name,
                         newline_id=tokenizer("\n", add_special_tokens=False)["input_ids"][-1])
    rng = random.Random(f"verifier-data-{cfg.seed}")

    if process:
        examples = [(r["prompt"], r["completion"]) for r in pool]
        examples += [(p.prompt, p.solution()) for p in train_probs if rng.random() < REFERENCE_SHARE]
        rng.shuffle(examples)
        labels = [y for p, c in examples for y in arith.step_labels(p, c)]
        pos_weight = torch.tensor((len(labels) - sum(labels)) / max(1, sum(labels)))
        log(f"[{cfg.name}] {len(examples)} solutions, {len(labels)} steps, {sum(labels) / len(labels):.1%} right")

        feats = precompute(model, tokenizer, examples, log)

        def loss_fn(step):
            start = (step * cfg.batch_size) % len(examples)
            picks = [(start + k) % len(examples) for k in range(cfg.batch_size)]
            batch = [examples[i] for i in picks]
            x, mask = _stack([feats[i] for i in picks])
            ends = [encode_ends(tokenizer, p, c) for p, c in batch]
            target_y, weight = dense_targets(mask.shape, batch, ends, tokenizer, pos_weight)
            logits = model.from_features(x, mask).logits[..., 0]  # [B, T]
            loss = F.binary_cross_entropy_with_logits(logits, target_y, weight=weight, reduction="sum")
            return loss / weight.sum().clamp_min(1.0), len(batch)
    else:
        by_problem: dict[int, list[tuple[str, str, bool]]] = {}
        for r in pool:
            by_problem.setdefault(r["problem"], []).append((r["prompt"], r["completion"], r["correct"]))
        groups = []
        for i, p in enumerate(train_probs):
            groups.append([(p.prompt, p.solution(), True)] + by_problem.get(i, []))
        rng.shuffle(groups)
        n_right = sum(c for g in groups for *_, c in g)
        n_all = sum(len(g) for g in groups)
        pos_weight = torch.tensor((n_all - n_right) / max(1, n_right))
        per_step = max(1, cfg.batch_size // len(groups[0]))
        log(f"[{cfg.name}] {len(groups)} problem groups, {n_all} solutions, {n_right / n_all:.1%} right")

        flat_all = [x for g in groups for x in g]
        feats = precompute(model, tokenizer, [(p, c) for p, c, _ in flat_all], log)
        offsets = [0]
        for g in groups:
            offsets.append(offsets[-1] + len(g))

        def loss_fn(step):
            start = (step * per_step) % len(groups)
            picks = [(start + k) % len(groups) for k in range(per_step)]
            batch = [groups[i] for i in picks]
            flat = [x for g in batch for x in g]
            x, mask = _stack([feats[j] for i in picks for j in range(offsets[i], offsets[i + 1])])
            tokens = model.from_features(x, mask, per_token=True).logits[..., 0]  # [B, T]
            logits = tokens[torch.arange(len(flat)), mask.sum(1) - 1]  # [B]: the outcome read-out
            y = torch.tensor([float(c) for *_, c in flat])
            loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
            pairs = [(p, c) for p, c, _ in flat]  # auxiliary: the PRM's dense step / character labels
            dense_y, dense_w = dense_targets(mask.shape, pairs, [encode_ends(tokenizer, p, c) for p, c in pairs],
                                             tokenizer, torch.tensor(1.0))
            dense_w[torch.arange(len(flat)), mask.sum(1) - 1] = 0.0  # the last token answers the outcome
            loss = loss + F.binary_cross_entropy_with_logits(tokens, dense_y, weight=dense_w, reduction="sum") / \
                dense_w.sum().clamp_min(1.0)
            listwise, at = [], 0
            for g in batch:
                s, right = logits[at : at + len(g)], y[at : at + len(g)]
                at += len(g)
                if 0 < right.sum() < len(g):  # -log P(a right one tops the group)
                    listwise.append(torch.logsumexp(s, 0) - torch.logsumexp(s[right > 0], 0))
            if listwise:
                loss = loss + torch.stack(listwise).mean()
            return loss, len(flat)

    def evaluate() -> dict:
        from ponder.modalities.text.verifiers import OutcomeVerifier, ProcessVerifier

        return heldout_metrics((ProcessVerifier if process else OutcomeVerifier)(model, tokenizer), heldout, process)

    result = _train_loop(model, cfg, out_dir, loss_fn, evaluate, log)
    metrics = {**evaluate(), "heldout_problems": len(eval_probs), "samples_per_problem": EVAL_SAMPLES,
               "heldout_temperature": EVAL_TEMPERATURE}
    card = _card(cfg, model, f"PonderVerifierHead ({'process' if process else 'outcome'} verifier on the frozen "
                 f"zoo:{target_name})",
                 f"{len(train_probs)} arith train problems, each sampled from zoo:arith at T in "
                 f"{list(TEMPERATURES)} and labelled exactly (every step for the PRM, the answer for the ORM), "
                 "plus reference solutions", metrics, result, target="arith",
                 heldout=f"zoo:arith's T={EVAL_TEMPERATURE} samples of {len(eval_probs)} held-out problems "
                         f"(template Q), {EVAL_SAMPLES} each")
    _save(model, tokenizer, out_dir, card)
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    return card


def train(name: str, zoo_dir: Path, log=print, steps: int | None = None, smoke: bool = False) -> dict:
    """Train verifier `name` ("prm" or "orm") for the zoo target into ``zoo_dir/name``.

    steps: override the step count. smoke: a tiny model on a few problems (tests; shape checks only).
    """
    if name not in ("prm", "orm"):
        raise KeyError(name)
    cfg = recipe_config(RECIPES[name], SMOKE_SHAPE, steps, smoke)
    counts = {"train_problems": 6, "eval_problems": 3} if smoke else {}
    return train_verifier(zoo_dir / name, cfg, zoo_dir / "arith", process=(name == "prm"), log=log, **counts)
