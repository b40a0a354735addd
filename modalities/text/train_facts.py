"""Recipe for ``zoo:facts`` (`ponder zoo train facts`): a character-level `LlamaForCausalLM` that knows
the facts world's known entities (its parametric knowledge) and reads documents (so it can use a
context), trained for a 2048-character context.

Training text (`ponder.modalities.text.facts`, world seed 0), a pure function of (seed, step): each
step packs examples of three kinds into windows —

* a known entity's document (what the model memorises);
* closed-book questions about known entities (`closed_book_prompt` + the answer);
* reading comprehension (`reading_prompt`): a question's own documents among distractor documents of
  other known entities, in random order, then the answer — 0 to 3 distractors in the short phase, up
  to `long_distractors` in the long one.

Held-out entities (by name hash) never appear, so questions about them can only be answered from a
document. Every answer ends with EOS. Context: train short (512), then extend (2048), as the pycode
recipe does. Card figures, greedy exact match on 200 questions each: closed-book accuracy on known
entities, reading accuracy on unseen entities, faithfulness to edited documents (knowledge
conflicts), and the share of conflict answers that are the memorised fact instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ponder.modalities.text import arith, facts
from ponder.modalities.text.train import _as_shipped, _card, _save, _train_loop, llama_config, recipe_config


@dataclass
class FactsConfig:
    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    steps: int
    batch_size: int  # windows per step at the short context (fewer at the long one: same tokens)
    lr: float
    seed: int = 0
    world_seed: int = 0
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    weight_decay: float = 0.05
    eval_every: int = 250
    short_context: int = 512
    long_context: int = 2048
    long_frac: float = 0.15
    long_distractors: int = 12
    eval_questions: int = 200


RECIPES = {"facts": FactsConfig("facts", 256, 768, 6, 8, steps=4000, batch_size=12, lr=2e-3)}
SMOKE_SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
               "batch_size": 2, "short_context": 64, "long_context": 128, "long_distractors": 1,
               "eval_questions": 4}
DATA = ("the facts world (ponder.modalities.text.facts, world seed 0): documents, closed-book questions and "
        "reading-comprehension examples of its known entities; held out: entities whose name hash falls in the "
        f"bottom {facts.HELD_OUT_PERCENT} %")


class Examples:
    """The training examples of a world, drawn by a seeded RNG."""

    def __init__(self, world: facts.World):
        self.world = world
        self.known = [n for n in world.entities() if not facts.held_out(n)]
        self.docs = {n: world.document(n)[1] for n in self.known}
        self.questions = world.questions(self.known)

    def draw(self, rng: random.Random, distractors: int) -> str:
        kind = rng.random()
        if kind < 0.3:
            return self.docs[rng.choice(self.known)]
        q = rng.choice(self.questions)
        if kind < 0.55:
            return facts.closed_book_prompt(q.question) + " " + q.answer
        own = [self.world.document(d.split("/", 1)[1])[1] for d in q.documents]
        others = [self.docs[n] for n in rng.sample(self.known, rng.randint(0, distractors))]
        docs = own + [d for d in others if d not in own]
        rng.shuffle(docs)
        return facts.reading_prompt(docs, q.question) + " " + q.answer


def window_shape(cfg: FactsConfig, step: int) -> tuple[int, int, int]:
    """(windows, characters per window, most distractors) of a step."""
    long_from = cfg.steps - int(round(cfg.long_frac * cfg.steps))
    if step < long_from:
        return cfg.batch_size, cfg.short_context, 3
    return max(1, cfg.batch_size * cfg.short_context // cfg.long_context), cfg.long_context, cfg.long_distractors


def batch(examples: Examples, tokenizer, cfg: FactsConfig, step: int) -> torch.Tensor:
    """The step's windows [B, T]: examples (BOS + text + EOS) packed end to end."""
    count, length, distractors = window_shape(cfg, step)
    rng = random.Random(cfg.seed * 1_000_003 + step)
    rows = []
    for _ in range(count):
        ids: list[int] = []
        while len(ids) < length:
            ids += tokenizer(examples.draw(rng, distractors))["input_ids"] + [tokenizer.eos_token_id]
        rows.append(ids[:length])
    return torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def exact_match(model, tokenizer, prompts: list[str], answers: list[str], max_new_tokens: int = 24) -> list[str]:
    """Greedy completions' answers (`facts.answer_of`), one per prompt."""
    out = []
    for prompt in prompts:
        enc = tokenizer([prompt], return_tensors="pt")
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out.append(facts.answer_of(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)))
    return out


def measure(model, tokenizer, world: facts.World, count: int, context: int) -> dict:
    """The card's figures (greedy exact match on `count` questions each)."""
    known = [n for n in world.entities() if not facts.held_out(n)]
    closed = [q for q in world.questions(known) if q.hops == 1][:: max(1, len(known) // count)][:count]
    got = exact_match(model, tokenizer, [facts.closed_book_prompt(q.question) for q in closed],
                      [q.answer for q in closed])
    unseen = world.unseen(count)
    docs = {d["id"]: d["text"] for d in world.corpus()}
    read = exact_match(model, tokenizer, [facts.reading_prompt([docs[d] for d in q.documents], q.question)
                                          for q in unseen], [q.answer for q in unseen])
    conflicts = world.conflicts(count)
    faithful = exact_match(model, tokenizer, [facts.reading_prompt([d["text"]], q.question) for d, q in conflicts],
                           [q.answer for _, q in conflicts])
    memorised = [_memorised(world, q) for _, q in conflicts]
    n = max(1, len(closed))
    return {"closed_book_accuracy_known": round(sum(a == q.answer for a, q in zip(got, closed)) / n, 4),
            "reading_accuracy_unseen": round(sum(a == q.answer for a, q in zip(read, unseen)) / max(1, len(unseen)), 4),
            "conflict_faithfulness": round(sum(a == q.answer for a, (_, q) in zip(faithful, conflicts))
                                           / max(1, len(conflicts)), 4),
            "conflict_memorised_answer": round(sum(a == m for a, m in zip(faithful, memorised))
                                               / max(1, len(conflicts)), 4),
            "questions_each": len(closed), "context": context}


def _memorised(world: facts.World, q: facts.Question) -> str:
    name = q.question.removeprefix("Where was ").removesuffix(" born?") if "born" in q.question else \
        q.question.removeprefix("Which company does ").removesuffix(" work for?")
    person = world.people[name]
    return person.born_in if "born" in q.question else person.employer


def train(name: str, zoo_dir: Path, log=print, steps: int | None = None, smoke: bool = False) -> dict:
    """Train ``zoo:facts`` into ``zoo_dir/facts``; returns its card (smoke: a tiny model in seconds)."""
    from transformers import LlamaForCausalLM

    if name not in RECIPES:
        raise KeyError(name)
    cfg = recipe_config(RECIPES[name], SMOKE_SHAPE, steps, smoke)
    torch.manual_seed(cfg.seed)
    world = facts.World.generate(cfg.world_seed) if not smoke else facts.World.generate(cfg.world_seed, people=40,
                                                                                        companies=12, cities=8)
    tokenizer = arith.build_tokenizer()
    examples = Examples(world)
    config = llama_config(cfg, tokenizer)
    config.max_position_embeddings = cfg.long_context
    model = LlamaForCausalLM(config)
    log(f"[{cfg.name}] {len(examples.known)} known entities, {len(examples.questions)} questions; "
        f"{sum(p.numel() for p in model.parameters()):,} parameters")

    def loss_fn(step):
        ids = batch(examples, tokenizer, cfg, step)
        return model(input_ids=ids, labels=ids).loss, ids.numel()

    out = zoo_dir / name
    out.mkdir(parents=True, exist_ok=True)
    result = _train_loop(model, cfg, out, loss_fn, None, log)
    _as_shipped(model)
    log(f"[{cfg.name}] measuring the card's figures")
    metrics = measure(model, tokenizer, world, cfg.eval_questions, cfg.long_context)
    card = _card(cfg, model, "LlamaForCausalLM (facts world reader)", DATA, metrics, result,
                 context=cfg.long_context, train_seconds=result["train_seconds_this_run"])
    _save(model, tokenizer, out, card)
    return card
