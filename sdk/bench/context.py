"""`ponder bench context`, its first part: RAPID on long prompts.

zoo:pycode (2048-token context) decodes held-out file prefixes of `PROMPT_TOKENS` tokens, greedy,
`NEW_TOKENS` new tokens each (EOS ignored, so every run decodes the same number), one torch thread:
plain decoding, speculative decoding with zoo:pycode-draft reading the whole prompt, and RAPID with
the same draft reading only the prompt's retrieved chunks and its tail. Tokens/s counts the whole
call (the target's prefill included); the methods take turns on each prompt in the same run, and
greedy outputs are checked to equal plain's. The issue's other parts (knowledge conflicts with CAD, RAG /
DRAG / IterDRAG against context length, kNN-LM on new entities) need `zoo:facts`, which is not
trained yet: this bench says so in its goals instead of measuring them.
"""

from __future__ import annotations

import time

from ponder.bench import goal

PROMPT_TOKENS = 1900
NEW_TOKENS = 128
PROMPTS = 8


def run(quick: bool = False, plot_dir=None) -> dict:

    import ponder
    from ponder.bench.pycode_workload import pycode_workload
    from ponder.bench.text_overhead import NoEOS
    from ponder.kernels.sampling import SamplingParams
    from ponder.search.decoding import plain, rapid, speculative

    target, draft = ponder.load("text", "zoo:pycode"), ponder.load("text", "zoo:pycode-draft")
    count, new = (2, 32) if quick else (PROMPTS, NEW_TOKENS)
    workload = pycode_workload(target, count=count, prompt_tokens=PROMPT_TOKENS, max_new_tokens=new)
    prompts = [target.encode(p) for p in workload.prompts]
    no_eos, greedy = NoEOS(target), SamplingParams(temperature=0.0)
    plain(no_eos, prompts[:1], sampling=greedy, max_new_tokens=4)  # warm-up
    methods = [("plain", plain, {}), ("speculative (draft reads the whole prompt)", speculative, {"draft": draft}),
               ("rapid (draft reads retrieved chunks + tail)", rapid, {"draft": draft})]
    # methods take turns on each prompt, so a drift in this machine's speed falls on all alike
    totals = {name: {"tokens": 0, "seconds": 0.0, "steps": 0, "accepted": 0, "draft_prompt": [], "out": []}
              for name, _, _ in methods}
    for ids in prompts:
        for name, fn, options in methods:
            one: dict = {}
            start = time.perf_counter()
            decoded = fn(no_eos, [ids], sampling=greedy, max_new_tokens=new, **options,
                         **({"stats": one} if options else {}))
            total = totals[name]
            total["seconds"] += time.perf_counter() - start
            total["tokens"] += len(decoded.tokens[0])
            total["out"].append(decoded.tokens[0])
            total["steps"] += one.get("steps", 0)
            total["accepted"] += one.get("accepted", 0)
            total["draft_prompt"] += one.get("draft_prompt_tokens", [])
    rows = []
    for name, _, _ in methods:
        t = totals[name]
        rows.append({"method": name, "prompts": len(prompts), "prompt_tokens": max(len(p) for p in prompts),
                     "new_tokens": t["tokens"], "seconds": round(t["seconds"], 2),
                     "tok_s": round(t["tokens"] / t["seconds"], 2),
                     "accepted_per_step": round(t["accepted"] / t["steps"], 3) if t["steps"] else None,
                     "draft_prompt_tokens": max(t["draft_prompt"]) if t["draft_prompt"] else None,
                     "same_as_plain": t["out"] == totals["plain"]["out"] if name != "plain" else None})
    base = rows[0]["tok_s"]
    for row in rows:
        row["x_plain"] = round(row["tok_s"] / base, 3)
    speed = rows[2]["x_plain"]
    goals = [goal("RAPID tokens/s vs plain at a ~2048-token context (lossless, greedy; outputs equal plain's)",
                  ">= 1.5", speed, speed >= 1.5 and bool(rows[2]["same_as_plain"])),
             goal("knowledge conflicts with CAD, RAG / DRAG / IterDRAG vs context, kNN-LM on new entities "
                  "(need zoo:facts, not trained yet)", "measured", 0.0, False)]
    return {"rows": rows, "goals": goals}
