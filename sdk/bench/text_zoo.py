"""`ponder bench text-zoo`: the text zoo's own goals, measured in one run.

* the draft's decode step costs <= 1/10 of the target's (ponder's plain loop, batch 1, same
  prompts, same number of tokens, best of several interleaved repeats);
* the draft agrees with the target's greedy token most of the time (measured here on held-out
  prompts along the target's greedy path, not read from the card);
* the target's held-out single-sample accuracy sits in the band where search has room to help
  (20-60 %), measured here with the exact checker.
"""

from __future__ import annotations

import time

import torch

from ponder.bench import goal
from ponder.bench.text_overhead import NoEOS


def _step_seconds(model, ids, new_tokens: int) -> float:
    from ponder.kernels.sampling import SamplingParams
    from ponder.search.decoding import plain

    start = time.perf_counter()
    out = plain(NoEOS(model), ids, sampling=SamplingParams(temperature=0.0), max_new_tokens=new_tokens)
    assert all(len(t) == new_tokens for t in out.tokens)
    return (time.perf_counter() - start) / new_tokens


@torch.inference_mode()
def _agreement(target, draft, prompts: list[str], max_new_tokens: int = 48) -> float:
    """Share of positions on the target's greedy path where the draft's argmax is the same."""
    import ponder

    agree = total = 0
    for prompt in prompts:
        res = ponder.generate(target, prompt, temperature=0.0, max_new_tokens=max_new_tokens)
        path = target.encode(prompt) + res.best.meta["token_ids"]
        ids = torch.tensor([path])
        t = target.model(input_ids=ids).logits[0, :-1].argmax(-1)
        d = draft.model(input_ids=ids).logits[0, :-1].argmax(-1)
        start = len(target.encode(prompt)) - 1
        agree += int((t[start:] == d[start:]).sum())
        total += len(path) - 1 - start
    return agree / max(1, total)


def run(quick: bool = False, plot_dir=None) -> dict:
    import ponder
    from ponder.kernels.sampling import SamplingParams
    from ponder.modalities.text import arith
    from ponder.search.core import candidate_generators
    from ponder.search.decoding import plain

    target = ponder.load("text", "zoo:arith")
    draft = ponder.load("text", "zoo:arith-draft")
    prompts = [p.prompt for p in arith.problems("heldout", 4, seed=5, template="Q")]
    ids = [target.encode(prompts[0])]
    new_tokens, repeats = (24, 3) if quick else (48, 7)
    _step_seconds(target, ids, 4), _step_seconds(draft, ids, 4)  # warm-up
    t_target, t_draft = [], []
    for _ in range(repeats):
        t_target.append(_step_seconds(target, ids, new_tokens))
        t_draft.append(_step_seconds(draft, ids, new_tokens))
    cost_ratio = min(t_draft) / min(t_target)
    count = 40 if quick else 200
    held = [p.prompt for p in arith.problems("heldout", count, seed=11, template="Q")]
    agreement = _agreement(target, draft, held[: count // 4])
    correct = 0
    for start in range(0, len(held), 50):  # one batched decode per 50 prompts, candidate seeds (0, i)
        chunk = held[start : start + 50]
        out = plain(target, [target.encode(p) for p in chunk], sampling=SamplingParams(temperature=1.0),
                    max_new_tokens=64, generators=candidate_generators(0, range(start, start + len(chunk))))
        correct += sum(arith.is_correct(p, target.decode(t)) for p, t in zip(chunk, out.tokens))
    accuracy = correct / len(held)
    rows = [
        {"what": "target ms/token (batch 1)", "value": round(min(t_target) * 1000, 3)},
        {"what": "draft ms/token (batch 1)", "value": round(min(t_draft) * 1000, 3)},
        {"what": "draft/target step cost", "value": round(cost_ratio, 4)},
        {"what": "draft greedy agreement", "value": round(agreement, 4)},
        {"what": f"target held-out accuracy, 1 sample at T=1 ({count} problems)", "value": round(accuracy, 4)},
    ]
    goals = [
        goal("draft step cost / target step cost", "<= 0.1", cost_ratio, cost_ratio <= 0.1),
        goal("draft agrees with target greedy token", ">= 0.5", agreement, agreement >= 0.5),
        goal("target held-out single-sample accuracy", "in [0.2, 0.6]", accuracy, 0.2 <= accuracy <= 0.6),
    ]
    return {"rows": rows, "goals": goals}
