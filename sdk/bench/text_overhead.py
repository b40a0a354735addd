"""`ponder bench text-overhead`: ponder's own decode loop vs HF `generate`, same model, same run.

Both decode greedily a fixed number of new tokens for the same held-out arith prompts (EOS is
ignored by both so the work is identical); the figure is tokens/s of ponder over tokens/s of HF,
interleaved over repeats and taking each side's best time. Goal: >= 0.9 (at most 10% overhead).
"""

from __future__ import annotations

import time

import torch

from ponder.bench import goal


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


class NoEOS:
    """The same model with no EOS, so the decoder always emits `max_new_tokens` per row."""

    def __init__(self, model):
        self._model = model
        self.eos_token_ids = frozenset()

    def __getattr__(self, name):
        return getattr(self._model, name)


def run(quick: bool = False, plot_dir=None) -> dict:
    import ponder
    from ponder.kernels.sampling import SamplingParams
    from ponder.modalities.text import arith
    from ponder.search.decoding import plain

    model = ponder.load("text", "zoo:arith")
    no_eos = NoEOS(model)
    greedy = SamplingParams(temperature=0.0)
    new_tokens = 32 if quick else 64
    repeats = 2 if quick else 5
    rows, goals = [], []
    for batch in (1, 8):
        prompts = [p.prompt for p in arith.problems("heldout", batch, seed=3, template="Q")]
        ids = [model.encode(p) for p in prompts]
        enc = model.tokenizer(prompts, return_tensors="pt", padding=True)

        def hf(enc=enc):
            with torch.inference_mode():
                model.model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                     pad_token_id=model.pad_token_id)

        def ours(ids=ids):
            out = plain(no_eos, ids, sampling=greedy, max_new_tokens=new_tokens)
            assert all(len(t) == new_tokens for t in out.tokens)

        hf(), ours()  # warm-up
        t_hf, t_ours = [], []
        for _ in range(repeats):  # interleave so drifting machine load hits both sides alike
            t_hf.append(_time(hf, 1))
            t_ours.append(_time(ours, 1))
        tokens = batch * new_tokens
        hf_tps, ours_tps = tokens / min(t_hf), tokens / min(t_ours)
        rows.append({"batch": batch, "new_tokens": new_tokens, "hf_tok_s": round(hf_tps, 1),
                     "ponder_tok_s": round(ours_tps, 1), "ratio": round(ours_tps / hf_tps, 4)})
        goals.append(goal(f"tokens/s ponder / HF generate, batch {batch}", ">= 0.9", ours_tps / hf_tps,
                          ours_tps / hf_tps >= 0.9))
    return {"rows": rows, "goals": goals}
