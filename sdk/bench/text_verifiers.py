"""`ponder bench text-verifiers`: do the zoo's learned verifiers pick the right sample of a problem?

For 240 held-out problems (template Q), N=8 samples of zoo:arith at T=1 (candidate seeds (0, i),
the pool best-of-N draws), each learned verifier (orm, prm) scores them. Reported per verifier,
all measured in this run, each with its standard error over problems:

* best-of-8 accuracy (the verifier's pick) against a random sample's accuracy (the mean over the
  problem's 8 samples) and against coverage (the exact verifier's pick: the upper bound); the
  paired difference pick - random per problem gives the gain's standard error;
* within-problem AUROC (right vs wrong samples of the same problem, problems with both) and the
  pooled AUROC (which a verifier can also earn by ranking problems by difficulty alone);
* the PRM's balanced step accuracy: every step of every sample labelled exactly
  (`arith.step_labels`), the mean of its accuracy (threshold 0.5) on right and on wrong steps.

Goals (issue 12): PRM balanced step accuracy >= 0.9; each verifier's best-of-8 pick >= 1.5x a
random sample's accuracy.
"""

from __future__ import annotations

import math

from ponder.bench import goal

PROBLEMS = 240
QUICK_PROBLEMS = 12
N = 8


def _auroc(pos: list[float], neg: list[float]) -> float:
    if not pos or not neg:
        return float("nan")
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n))."""
    n = len(values)
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return m, math.sqrt(var / n)


def run(quick: bool = False, plot_dir=None) -> dict:
    import ponder
    from ponder.modalities.text import arith
    from ponder.modalities.text.train_verifiers import balanced_accuracy

    lm = ponder.load("text", "zoo:arith")
    problems = arith.problems("heldout", QUICK_PROBLEMS if quick else PROBLEMS, seed=21, template="Q")
    samples = []  # (prompt, outputs, correct flags)
    for p in problems:
        res = ponder.generate(lm, p.prompt, n=N, seed=0, max_new_tokens=64)
        outs = [c.output for c in res.candidates]
        samples.append((p.prompt, outs, [arith.is_correct(p.prompt, o) for o in outs]))
    random_acc = [sum(ok) / N for _, _, ok in samples]
    coverage = mean_se([float(any(ok)) for _, _, ok in samples])
    single = mean_se(random_acc)
    rows, goals = [], []
    for name in ("orm", "prm"):
        verifier = ponder.load_verifier("text", name)
        picked, pos, neg, within, steps, labels = [], [], [], [], [], []
        for prompt, outs, ok in samples:
            if name == "prm":
                per_step = verifier.step_scores_batch(prompt, outs)
                scores = [verifier._reduce(s) for s in per_step]
                for s, out in zip(per_step, outs):
                    steps += s
                    labels += arith.step_labels(prompt, out)[: len(s)]
            else:
                scores = verifier.score(prompt, outs).tolist()
            picked.append(float(ok[max(range(N), key=scores.__getitem__)]))
            pos += [s for s, o in zip(scores, ok) if o]
            neg += [s for s, o in zip(scores, ok) if not o]
            if any(ok) and not all(ok):
                within.append(_auroc([s for s, o in zip(scores, ok) if o], [s for s, o in zip(scores, ok) if not o]))
        best = mean_se(picked)
        gain = mean_se([a - b for a, b in zip(picked, random_acc)])
        row = {"verifier": name, "problems": len(samples), "n": N,
               "random_sample_acc": round(single[0], 4), "random_sample_se": round(single[1], 4),
               f"best_of_{N}_acc": round(best[0], 4), f"best_of_{N}_se": round(best[1], 4),
               "gain_over_random": round(gain[0], 4), "gain_se": round(gain[1], 4),
               "pick_over_random": round(best[0] / single[0], 3) if single[0] else None,
               "coverage": round(coverage[0], 4), "coverage_se": round(coverage[1], 4),
               "within_problem_auroc": round(sum(within) / len(within), 4) if within else None,
               "within_problem_auroc_se": round(mean_se(within)[1], 4) if len(within) > 1 else None,
               "problems_with_right_and_wrong": len(within),
               "pooled_auroc": round(_auroc(pos, neg), 4)}
        if name == "prm":
            right = [s > 0.5 for s, y in zip(steps, labels) if y]
            wrong = [s <= 0.5 for s, y in zip(steps, labels) if not y]
            row.update({"balanced_step_acc": round(balanced_accuracy(steps, labels), 4),
                        "right_step_acc": round(sum(right) / max(1, len(right)), 4),
                        "wrong_step_acc": round(sum(wrong) / max(1, len(wrong)), 4),
                        "steps": len(steps), "right_steps": len(right)})
            goals.append(goal("prm balanced step accuracy (held-out samples of zoo:arith)", ">= 0.9",
                              row["balanced_step_acc"], row["balanced_step_acc"] >= 0.9))
        rows.append(row)
        ratio = best[0] / max(single[0], 1e-9)
        goals.append(goal(f"{name} best-of-{N} accuracy / a random sample's (gain {gain[0]:.3f} +- {gain[1]:.3f})",
                          ">= 1.5", ratio, ratio >= 1.5))
    return {"rows": rows, "goals": goals}
