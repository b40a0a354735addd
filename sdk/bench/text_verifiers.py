"""`ponder bench text-verifiers`: are the zoo's learned verifiers useful to search on arith?

For held-out problems, N=8 samples of zoo:arith at T=1 (candidate seeds (0, i)); each learned
verifier (orm, prm) scores them. Reported per verifier, all measured in this run:
* AUROC of its scores for correct vs incorrect samples (pooled over problems);
* accuracy of the verifier's pick among the 8 against the mean single-sample accuracy (the
  baseline) and against coverage (the exact verifier's pick: the upper bound).
Goal: the verifier's best-of-8 pick beats a random sample.
"""

from __future__ import annotations

from ponder.bench import goal


def _auroc(pos: list[float], neg: list[float]) -> float:
    if not pos or not neg:
        return float("nan")
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def run(quick: bool = False, plot_dir=None) -> dict:
    import ponder
    from ponder.modalities.text import arith

    lm = ponder.load("text", "zoo:arith")
    n = 8
    problems = arith.problems("heldout", 20 if quick else 100, seed=21, template="Q")
    samples = []  # (prompt, outputs, correct flags)
    for p in problems:
        res = ponder.generate(lm, p.prompt, n=n, seed=0, max_new_tokens=64)
        outs = [c.output for c in res.candidates]
        samples.append((p.prompt, outs, [arith.is_correct(p.prompt, o) for o in outs]))
    single = sum(sum(ok) / n for _, _, ok in samples) / len(samples)
    coverage = sum(any(ok) for _, _, ok in samples) / len(samples)
    rows, goals = [], []
    for name in ("orm", "prm"):
        verifier = ponder.load_verifier("text", name)
        picked, pos, neg = 0, [], []
        for prompt, outs, ok in samples:
            scores = verifier.score(prompt, outs).tolist()
            picked += ok[max(range(n), key=scores.__getitem__)]
            pos += [s for s, o in zip(scores, ok) if o]
            neg += [s for s, o in zip(scores, ok) if not o]
        best = picked / len(samples)
        rows.append({"verifier": name, "problems": len(samples), "single_sample_acc": round(single, 4),
                     f"best_of_{n}_acc": round(best, 4), "coverage": round(coverage, 4),
                     "auroc": round(_auroc(pos, neg), 4)})
        goals.append(goal(f"{name} best-of-{n} accuracy / single-sample accuracy", "> 1.0",
                          best / max(single, 1e-9), best > single))
    return {"rows": rows, "goals": goals}
