"""`ponder bench text-scaling`: accuracy against compute for every scaling strategy on arith.

Held-out arith problems (Q template), budgets N in {1, 2, 4, 8, 16, 32}, zoo:arith at T=1.

* Independent-sample methods — best-of-N (ORM, PRM and the self-evaluation verifier), weighted
  best-of-N (ORM), self-consistency, RPC, and coverage (the exact verifier: the upper bound) — are
  read off one pool of 32 samples per problem: candidate i is seeded (0, i) whatever the batch, so
  the first N of the pool *are* the N candidates a run with budget N draws, and each method's own
  pick function (the code its strategy runs) chooses among them. A timing subset of problems runs
  every method for real at every N: its wall time is the ``seconds`` column, and its picks must
  equal the pool's (``pool_mismatches`` counts any difference; it should be 0).
* Step-level methods — beam search with the PRM, particle filtering with the PRM and with the
  self-evaluation verifier, compute-optimal, and adaptive sampling (stopping at a self-evaluation
  score of 0.95, or at a 0.6 vote share; its rows report the mean samples used) — run for real on
  every problem and budget.
* Compute-optimal's policy (difficulty level -> strategy) is fitted on train-split problems at
  N=16 with the PRM, never on the held-out problems it is scored on.
* A temperature sweep {0.4, 0.7, 1.0, 1.3} of best-of-N (ORM) and coverage.

Per row: accuracy, mean tokens / model calls / verifier calls per problem, and (where timed) mean
wall seconds. Writes ``text-scaling.json`` and ``text-scaling.png`` (accuracy vs tokens and vs wall
time) into ``--plot DIR`` (default ``bench-results/``). Goals: batched best-of-16 costs <= 3x the
wall time of one sample (same run); learned-verifier methods rise with N; the particle filter is
at least as good as best-of-N at equal budget with the same verifier.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

from ponder.bench import goal

NS = (1, 2, 4, 8, 16, 32)
QUICK_NS = (1, 2)
TEMPERATURES = (0.4, 0.7, 1.0, 1.3)
MAX_NEW_TOKENS = 64
WEIGHT_T = {"prm": 0.1, "self": 0.05}  # particle weight temperatures, set a priori from each score's spread


def _width(n: int) -> int:
    return min(4, n)


def _decode_calls(cands) -> int:
    """Forward passes of one batched decode of these candidates (prefill gives the first token)."""
    return max(c.meta["num_tokens"] + (c.meta["stop_reason"] == "eos") for c in cands)


def _tokens(cands) -> int:
    return sum(c.meta["num_tokens"] + (c.meta["stop_reason"] == "eos") for c in cands)


class _Pool:
    """`nmax` samples of one problem at one temperature, scored by every outcome verifier once."""

    def __init__(self, lm, prompt, temperature, nmax, verifiers):
        from ponder.kernels.sampling import SamplingParams
        from ponder.search.scaling import sample

        self.prompt = prompt
        res = sample(lm, prompt, n=nmax, seed=0, sampling=SamplingParams(temperature=temperature),
                     max_new_tokens=MAX_NEW_TOKENS)
        self.cands = res.candidates
        self.scores = {name: v.score(prompt, [c.output for c in self.cands]).tolist()
                       for name, v in verifiers.items()}

    def first(self, n, verifier=None):
        cands = copy.deepcopy(self.cands[:n])
        if verifier is not None:
            for c, s in zip(cands, self.scores[verifier]):
                c.score = s
        return cands


def _pool_pick(method, cands, lm):
    from ponder.search.scaling.best_of_n import pick_best, pick_weighted
    from ponder.search.scaling.rpc import rpc_pick
    from ponder.search.scaling.self_consistency import majority_pick

    if method == "best-of-n":
        return pick_best(cands)
    if method == "weighted-best-of-n":
        return pick_weighted(cands, lm.extract_answer)[0]
    if method == "self-consistency":
        return majority_pick(cands, lm.extract_answer)[0]
    if method == "rpc":
        return rpc_pick(cands, lm.extract_answer)[0]
    raise KeyError(method)


# (label, strategy, verifier) read off the pool
POOL_METHODS = [
    ("best-of-n/orm", "best-of-n", "orm"),
    ("best-of-n/prm", "best-of-n", "prm"),
    ("best-of-n/self", "best-of-n", "self"),
    ("weighted-best-of-n/orm", "weighted-best-of-n", "orm"),
    ("self-consistency", "self-consistency", None),
    ("rpc", "rpc", None),
]
STEP_METHODS = [
    ("beam/prm", "beam", "prm"),
    ("particles/prm", "particles", "prm"),
    ("particles/self", "particles", "self"),
]


def _step_options(strategy, verifier_name, n):
    if strategy == "particles":
        return {"weight_temperature": WEIGHT_T[verifier_name]}
    return {"beam_width": _width(n)}


def _fit_policy(lm, verifiers, log, quick):
    """Difficulty level -> strategy, from train-split problems at N=16 (PRM probes of 4)."""
    from ponder.modalities.text import arith
    from ponder.search.scaling import get_strategy
    from ponder.search.scaling.compute_optimal import DEFAULT_BINS, difficulty_level, fit_policy

    n, probe = (4, 2) if quick else (16, 4)
    dev = arith.problems("train", 2 if quick else 16, seed=44, template="Q")
    acc: dict[int, dict[str, list[int]]] = {}
    for p in dev:
        pool = _Pool(lm, p.prompt, 1.0, n, {"prm": verifiers["prm"]})
        level = difficulty_level(sum(pool.scores["prm"][:probe]) / probe, DEFAULT_BINS)
        row = acc.setdefault(level, {})
        for strategy in ("best-of-n", "weighted-best-of-n", "self-consistency"):
            best = _pool_pick(strategy, pool.first(n, "prm"), lm)
            row.setdefault(strategy, []).append(arith.is_correct(p.prompt, best.output))
        for strategy in ("beam", "particles"):
            res = get_strategy(strategy)(lm, p.prompt, verifiers["prm"], n=n - probe, seed=0,
                                         max_new_tokens=MAX_NEW_TOKENS, **_step_options(strategy, "prm", n - probe))
            row.setdefault(strategy, []).append(arith.is_correct(p.prompt, res.best.output))
    means = {lvl: {s: sum(v) / len(v) for s, v in row.items()} for lvl, row in acc.items()}
    policy = {lvl: "weighted-best-of-n" for lvl in range(1, len(DEFAULT_BINS) + 2)}  # levels never seen
    policy.update(fit_policy(means))
    log(f"[text-scaling] compute-optimal policy fitted on {len(dev)} train problems: {policy}")
    return policy


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # stdout carries the --json report


def run(quick: bool = False, plot_dir=None, log=_stderr) -> dict:
    import ponder
    from ponder.modalities.text import arith

    lm = ponder.load("text", "zoo:arith")
    verifiers = {"orm": ponder.load_verifier("text", "orm"), "prm": ponder.load_verifier("text", "prm"),
                 "self": ponder.load_verifier("text", "self", model=lm)}
    ns = QUICK_NS if quick else NS
    nmax = max(ns)
    problems = arith.problems("heldout", 2 if quick else 16, seed=33, template="Q")
    timed = problems[: 1 if quick else 3]
    temps = (1.0,) if quick else TEMPERATURES
    t0 = time.perf_counter()

    pools = {}  # (temperature, problem index) -> _Pool
    for temp in temps:
        for pi, p in enumerate(problems):
            outcome = verifiers if temp == 1.0 else {"orm": verifiers["orm"]}
            pools[temp, pi] = _Pool(lm, p.prompt, temp, nmax, outcome)
        log(f"[text-scaling] pool T={temp}: {len(problems)} problems x {nmax} samples "
            f"({time.perf_counter() - t0:.0f}s)")

    def correct(prompt, cand):
        return cand is not None and arith.is_correct(prompt, cand.output)

    rows = []
    # ---- coverage and pool methods, with timing of real runs on the timing subset
    mismatches = 0
    for n in ns:
        cov = [any(correct(p.prompt, c) for c in pools[1.0, i].first(n)) for i, p in enumerate(problems)]
        toks = [_tokens(pools[1.0, i].first(n)) for i in range(len(problems))]
        calls = [_decode_calls(pools[1.0, i].first(n)) for i in range(len(problems))]
        rows.append(_row("coverage (exact)", "exact", n, cov, toks, calls, [n] * len(problems), None))
        for label, strategy, vname in POOL_METHODS:
            picks = [_pool_pick(strategy, pools[1.0, i].first(n, vname), lm) for i in range(len(problems))]
            acc = [correct(p.prompt, c) for p, c in zip(problems, picks)]
            seconds = []
            for i, p in enumerate(timed):
                res = ponder.generate(lm, p.prompt, strategy=strategy, n=n, verifier=verifiers.get(vname), seed=0,
                                      max_new_tokens=MAX_NEW_TOKENS)
                seconds.append(res.compute.seconds)
                mismatches += res.best.output != picks[i].output
            vcalls = [n if vname else 0] * len(problems)
            rows.append(_row(label, vname or "-", n, acc, toks, calls, vcalls, seconds))
        log(f"[text-scaling] pool methods at N={n} ({time.perf_counter() - t0:.0f}s)")
    one_sample = []
    for p in timed:  # the speed goal's baseline: one sample, no verifier
        one_sample.append(ponder.generate(lm, p.prompt, n=1, seed=0, max_new_tokens=MAX_NEW_TOKENS).compute.seconds)

    # ---- temperature sweep (best-of-N with the ORM, and coverage)
    for temp in temps:
        for n in ns:
            picks = [_pool_pick("best-of-n", pools[temp, i].first(n, "orm"), lm) for i in range(len(problems))]
            rows.append({**_row(f"best-of-n/orm T={temp}", "orm", n, [correct(p.prompt, c) for p, c in
                                                                        zip(problems, picks)],
                                [_tokens(pools[temp, i].first(n)) for i in range(len(problems))],
                                [_decode_calls(pools[temp, i].first(n)) for i in range(len(problems))],
                                [n] * len(problems), None),
                         "coverage": round(sum(any(correct(p.prompt, c) for c in pools[temp, i].first(n))
                                               for i, p in enumerate(problems)) / len(problems), 4)})

    # ---- step-level methods and compute-optimal, run for real everywhere
    policy = _fit_policy(lm, verifiers, log, quick)
    for n in ns:
        for label, strategy, vname in STEP_METHODS:
            rows.append(_real(lm, label, strategy, verifiers[vname], vname, n, problems,
                              _step_options(strategy, vname, n)))
        if n >= 2:
            probe = max(1, n // 4)
            rows.append(_real(lm, "compute-optimal/prm", "compute-optimal", verifiers["prm"], "prm", n, problems,
                              {"probe": probe, "policy": policy, "beam_width": _width(n - probe)}))
        rows += adaptive_rows(lm, verifiers, n, problems)
        log(f"[text-scaling] step methods at N={n} ({time.perf_counter() - t0:.0f}s)")

    goals = _goals(rows, ns, one_sample, mismatches)
    report = {"rows": rows, "goals": goals, "policy": {str(k): v for k, v in policy.items()},
              "problems": len(problems), "timed_problems": len(timed), "pool_mismatches": mismatches}
    out = Path(plot_dir) if plot_dir is not None else Path("bench-results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "text-scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(rows, out / "text-scaling.png")
    log(f"[text-scaling] wrote {out / 'text-scaling.json'} and {out / 'text-scaling.png'}")
    return {"rows": rows, "goals": goals}


def _row(method, verifier, n, correct, tokens, calls, vcalls, seconds) -> dict:
    k = len(correct)
    return {"method": method, "verifier": verifier, "n": n, "accuracy": round(sum(correct) / k, 4),
            "tokens": round(sum(tokens) / k, 1), "model_calls": round(sum(calls) / k, 1),
            "verifier_calls": round(sum(vcalls) / k, 1),
            "seconds": round(sum(seconds) / len(seconds), 4) if seconds else None}


ADAPTIVE_CONFIDENCE = {"self": 0.95, None: 0.6}  # a self-evaluation score; a vote share


def adaptive_rows(lm, verifiers, n, problems) -> list[dict]:
    """Adaptive sampling with budget `n`: with the self-evaluation verifier and by vote."""
    return [_real(lm, f"adaptive/{vname or 'vote'}", "adaptive", verifiers.get(vname), vname or "-", n, problems,
                  {"confidence": ADAPTIVE_CONFIDENCE[vname]}) for vname in ("self", None)]


def _real(lm, label, strategy, verifier, vname, n, problems, options) -> dict:
    """`strategy` run for real on every problem at budget `n`."""
    from ponder.modalities.text import arith
    from ponder.search.scaling import get_strategy

    acc, toks, calls, vcalls, secs, used = [], [], [], [], [], []
    for p in problems:
        res = get_strategy(strategy)(lm, p.prompt, verifier, n=n, seed=0, max_new_tokens=MAX_NEW_TOKENS, **options)
        acc.append(res.best is not None and arith.is_correct(p.prompt, res.best.output))
        toks.append(res.compute.tokens)
        calls.append(res.compute.model_calls)
        vcalls.append(res.compute.verifier_calls)
        secs.append(res.compute.seconds)
        used.append(res.config.get("samples_used", len(res.candidates)))
    row = _row(label, vname, n, acc, toks, calls, vcalls, secs)
    if strategy == "adaptive":  # Adaptive Inference-Time Compute reports the samples it spent
        row["mean_samples_used"] = round(sum(used) / len(used), 2)
    return row


def _acc(rows, method, n):
    return next((r["accuracy"] for r in rows if r["method"] == method and r["n"] == n), None)


def _goals(rows, ns, one_sample, mismatches) -> list[dict]:
    goals = []
    lo, hi = min(ns), max(ns)
    bo16 = next((r["seconds"] for r in rows if r["method"] == "best-of-n/orm" and r["n"] == 16), None)
    if bo16 is not None:
        ratio = bo16 / (sum(one_sample) / len(one_sample))
        goals.append(goal("best-of-16 (batched, ORM) wall time / one sample", "<= 3.0", ratio, ratio <= 3.0))
    for method in ("best-of-n/orm", "weighted-best-of-n/orm", "beam/prm", "particles/prm"):
        a, b = _acc(rows, method, lo), _acc(rows, method, hi)
        goals.append(goal(f"{method} accuracy N={hi} - N={lo} (learned verifier rises with N)", "> 0", b - a, b > a))
    n = 16 if 16 in ns else hi
    for vname in ("prm", "self"):  # equal budget, same verifier
        pf, bon = _acc(rows, f"particles/{vname}", n), _acc(rows, f"best-of-n/{vname}", n)
        goals.append(goal(f"particles/{vname} - best-of-n/{vname} accuracy at N={n}", ">= 0", pf - bon, pf >= bon))
    goals.append(goal("pool picks that differ from a real run of the strategy", "== 0", mismatches, mismatches == 0))
    return goals


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if " T=" not in m]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    colors = plt.get_cmap("tab20")
    for k, m in enumerate(methods):
        mine = [r for r in rows if r["method"] == m]
        style = dict(linestyle="--" if m.startswith("coverage") else "-", marker="o", color=colors(k % 20), label=m)
        axes[0].plot([r["n"] for r in mine], [r["accuracy"] for r in mine], **style)
        axes[1].plot([r["tokens"] for r in mine], [r["accuracy"] for r in mine], **style)
        timed = [r for r in mine if r["seconds"] is not None]
        if timed:
            axes[2].plot([r["seconds"] for r in timed], [r["accuracy"] for r in timed], **style)
    for ax, xlabel in zip(axes, ("budget N", "tokens sampled per problem (model compute)",
                                 "wall seconds per problem (pool methods: timing subset)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("ponder bench text-scaling: zoo:arith, held-out problems")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
