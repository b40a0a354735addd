"""`ponder bench text-scaling`: accuracy against compute for every scaling strategy on arith.

200 held-out arith problems (Q template), zoo:arith at T=1. Every accuracy comes with its standard
error over problems, and every gain a goal names with the standard error of the paired difference.

* Independent-sample methods — best-of-N (ORM, PRM and the self-evaluation verifier), weighted
  best-of-N (ORM), self-consistency, RPC, and coverage (the exact verifier: the upper bound) — are
  read off one pool of 32 samples per problem at N in {1, 2, 4, 8, 16, 32}: candidate i is seeded
  (0, i) whatever the batch, so the first N of the pool *are* the N candidates a run with budget N
  draws, and each method's own pick function (the code its strategy runs) chooses among them. A
  timing subset of problems runs every method for real at every N: its wall time is the
  ``seconds`` column, and its picks must equal the pool's (``pool_mismatches``; it should be 0).
* Step-level methods — beam search with the PRM, particle filtering with the PRM and with the
  self-evaluation verifier, compute-optimal, and adaptive sampling (stopping at a self-evaluation
  score of 0.95, or at a 0.6 vote share; its rows report the mean samples used) — run for real on
  every problem at N in {4, 16}.
* Compute-optimal's policy (difficulty level -> strategy) is fitted on train-split problems at
  N=16 with the PRM, never on the held-out problems it is scored on.
* A temperature sweep {0.4, 0.7, 1.0, 1.3} of best-of-N (ORM) and coverage on the first 100 problems.

The bench resumes where it stopped: every finished unit (a problem's pool, a strategy's run on a
problem, the fitted policy) is appended to ``text-scaling.state.jsonl`` in the output folder, keyed
by a fingerprint of the zoo cards and the bench's settings; a rerun with the same models skips what
is there (a run with other models starts over). Writes ``text-scaling.json`` and
``text-scaling.png`` into ``--plot DIR`` (default ``bench-results/``).

Goals (issue 12): best-of-N with the PRM rises at every doubling from N=1 to 32, N=32 beats N=1 by
more than two standard errors, and it beats majority vote at N=16; beam + PRM >= best-of-N + PRM at
equal generated tokens at N=16 (Snell et al.); particles + PRM >= beam + PRM at N=16 (Puri et al.);
compute-optimal >= the best fixed strategy at N=16; batched best-of-16 costs <= 3x the wall time of
one sample; pool picks equal real runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import time
from pathlib import Path

from ponder.bench import goal

NS = (1, 2, 4, 8, 16, 32)
STEP_NS = (4, 16)
QUICK_NS = (1, 2)
QUICK_STEP_NS = (2,)
PROBLEMS = 200
SWEEP_PROBLEMS = 100
TIMED_PROBLEMS = 3
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


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error (sample standard deviation / sqrt(n)) of per-problem values."""
    values = [float(v) for v in values]
    n = len(values)
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return m, math.sqrt(var / n)


class _State:
    """Finished units of work, one JSON line each; a rerun with the same fingerprint reuses them."""

    def __init__(self, path: Path, fingerprint: str):
        self.path, self.done = path, {}
        if path.is_file():
            lines = path.read_text().splitlines()
            head = json.loads(lines[0]) if lines else {}
            if head.get("fingerprint") == fingerprint:
                for line in lines[1:]:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:  # a line torn by a kill: redo that unit
                        continue
                    self.done[rec["key"]] = rec["value"]
        from ponder.jobs.store import write_atomic

        body = [json.dumps({"fingerprint": fingerprint})] + [json.dumps({"key": k, "value": v})
                                                             for k, v in self.done.items()]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, ("\n".join(body) + "\n").encode())

    def get(self, key: str, make):
        if key not in self.done:
            value = make()
            with self.path.open("a") as f:
                f.write(json.dumps({"key": key, "value": value}) + "\n")
            self.done[key] = value
        return self.done[key]


def _fingerprint(quick: bool) -> str:
    from ponder import zoo

    cards = [(zoo.entry(name).folder / "card.json").read_text() for name in ("arith", "orm", "prm")]
    settings = [quick, NS, STEP_NS, PROBLEMS, SWEEP_PROBLEMS, TEMPERATURES, MAX_NEW_TOKENS, WEIGHT_T]
    return hashlib.sha256(json.dumps([cards, repr(settings)]).encode()).hexdigest()[:16]


def _make_pool(lm, prompt, temperature, nmax, verifiers) -> dict:
    from ponder.kernels.sampling import SamplingParams
    from ponder.search.scaling import sample

    res = sample(lm, prompt, n=nmax, seed=0, sampling=SamplingParams(temperature=temperature),
                 max_new_tokens=MAX_NEW_TOKENS)
    outs = [c.output for c in res.candidates]
    return {"cands": [{"output": c.output, "seed": c.seed,
                       "meta": {k: v for k, v in c.meta.items() if k != "token_ids"}} for c in res.candidates],
            "scores": {name: v.score(prompt, outs).tolist() for name, v in verifiers.items()}}


class _Pool:
    """`nmax` samples of one problem at one temperature, scored by every outcome verifier once."""

    def __init__(self, saved: dict):
        from ponder.search.core import Candidate

        self.cands = [Candidate(c["output"], None, c["seed"], c["meta"]) for c in saved["cands"]]
        self.scores = saved["scores"]

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


def _fit_policy(lm, verifiers, state, log, quick):
    """Difficulty level -> strategy, from train-split problems at N=16 (PRM probes of 4)."""
    from ponder.modalities.text import arith
    from ponder.search.scaling import get_strategy
    from ponder.search.scaling.compute_optimal import DEFAULT_BINS, difficulty_level, fit_policy

    def fit():
        n, probe = (4, 2) if quick else (16, 4)
        dev = arith.problems("train", 2 if quick else 16, seed=44, template="Q")
        acc: dict[int, dict[str, list[int]]] = {}
        for p in dev:
            pool = _Pool(_make_pool(lm, p.prompt, 1.0, n, {"prm": verifiers["prm"]}))
            level = difficulty_level(sum(pool.scores["prm"][:probe]) / probe, DEFAULT_BINS)
            row = acc.setdefault(level, {})
            for strategy in ("best-of-n", "weighted-best-of-n", "self-consistency"):
                best = _pool_pick(strategy, pool.first(n, "prm"), lm)
                row.setdefault(strategy, []).append(arith.is_correct(p.prompt, best.output))
            for strategy in ("beam", "particles"):
                res = get_strategy(strategy)(lm, p.prompt, verifiers["prm"], n=n - probe, seed=0,
                                             max_new_tokens=MAX_NEW_TOKENS,
                                             **_step_options(strategy, "prm", n - probe))
                row.setdefault(strategy, []).append(arith.is_correct(p.prompt, res.best.output))
        means = {lvl: {s: sum(v) / len(v) for s, v in row.items()} for lvl, row in acc.items()}
        policy = {lvl: "weighted-best-of-n" for lvl in range(1, len(DEFAULT_BINS) + 2)}  # levels never seen
        policy.update(fit_policy(means))
        log(f"[text-scaling] compute-optimal policy fitted on {len(dev)} train problems: {policy}")
        return {str(k): v for k, v in policy.items()}

    return {int(k): v for k, v in state.get("policy", fit).items()}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # stdout carries the --json report


def run(quick: bool = False, plot_dir=None, log=_stderr) -> dict:
    import ponder
    from ponder.modalities.text import arith

    lm = ponder.load("text", "zoo:arith")
    verifiers = {"orm": ponder.load_verifier("text", "orm"), "prm": ponder.load_verifier("text", "prm"),
                 "self": ponder.load_verifier("text", "self", model=lm)}
    ns, step_ns = (QUICK_NS, QUICK_STEP_NS) if quick else (NS, STEP_NS)
    nmax = max(ns)
    problems = arith.problems("heldout", 2 if quick else PROBLEMS, seed=33, template="Q")
    sweep = problems[: 2 if quick else SWEEP_PROBLEMS]
    timed = problems[: 1 if quick else TIMED_PROBLEMS]
    temps = (1.0,) if quick else TEMPERATURES
    out = Path(plot_dir) if plot_dir is not None else Path("bench-results")
    state = _State(out / "text-scaling.state.jsonl", _fingerprint(quick))
    if state.done:
        log(f"[text-scaling] resuming: {len(state.done)} finished units in {state.path}")
    t0 = time.perf_counter()

    pools = {}  # (temperature, problem index) -> _Pool
    for temp in temps:
        for pi, p in enumerate(problems if temp == 1.0 else sweep):
            outcome = verifiers if temp == 1.0 else {"orm": verifiers["orm"]}
            pools[temp, pi] = _Pool(state.get(f"pool/{temp}/{pi}", lambda p=p, t=temp, v=outcome: _make_pool(
                lm, p.prompt, t, nmax, v)))
            if (pi + 1) % 25 == 0:
                log(f"[text-scaling] pool T={temp}: {pi + 1} problems x {nmax} samples "
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
                def real(p=p, strategy=strategy, vname=vname, n=n):
                    res = ponder.generate(lm, p.prompt, strategy=strategy, n=n, verifier=verifiers.get(vname),
                                          seed=0, max_new_tokens=MAX_NEW_TOKENS)
                    return {"seconds": res.compute.seconds, "output": res.best.output}
                done = state.get(f"timed/{label}/{n}/{i}", real)
                seconds.append(done["seconds"])
                mismatches += done["output"] != picks[i].output
            vcalls = [n if vname else 0] * len(problems)
            rows.append(_row(label, vname or "-", n, acc, toks, calls, vcalls, seconds))
    one_sample = [state.get(f"one-sample/{i}", lambda p=p: ponder.generate(
        lm, p.prompt, n=1, seed=0, max_new_tokens=MAX_NEW_TOKENS).compute.seconds) for i, p in enumerate(timed)]

    # ---- temperature sweep (best-of-N with the ORM, and coverage)
    for temp in temps:
        for n in ns:
            picks = [_pool_pick("best-of-n", pools[temp, i].first(n, "orm"), lm) for i in range(len(sweep))]
            rows.append({**_row(f"best-of-n/orm T={temp}", "orm", n,
                                [correct(p.prompt, c) for p, c in zip(sweep, picks)],
                                [_tokens(pools[temp, i].first(n)) for i in range(len(sweep))],
                                [_decode_calls(pools[temp, i].first(n)) for i in range(len(sweep))],
                                [n] * len(sweep), None),
                         "coverage": round(sum(any(correct(p.prompt, c) for c in pools[temp, i].first(n))
                                               for i, p in enumerate(sweep)) / len(sweep), 4)})

    # ---- step-level methods and compute-optimal, run for real on every problem
    policy = _fit_policy(lm, verifiers, state, log, quick)
    for n in step_ns:
        for label, strategy, vname in STEP_METHODS:
            rows.append(_real(lm, state, label, strategy, verifiers[vname], vname, n, problems,
                              _step_options(strategy, vname, n)))
        probe = max(1, n // 4)
        rows.append(_real(lm, state, "compute-optimal/prm", "compute-optimal", verifiers["prm"], "prm", n, problems,
                          {"probe": probe, "policy": policy, "beam_width": _width(n - probe)}))
        rows += adaptive_rows(lm, state, verifiers, n, problems)
        log(f"[text-scaling] step methods at N={n} ({time.perf_counter() - t0:.0f}s)")

    goals = _goals(rows, ns, step_ns, one_sample, mismatches)
    report = {"rows": [{k: v for k, v in r.items() if k != "per_problem"} for r in rows], "goals": goals,
              "policy": {str(k): v for k, v in policy.items()}, "problems": len(problems),
              "sweep_problems": len(sweep), "timed_problems": len(timed), "pool_mismatches": mismatches}
    out.mkdir(parents=True, exist_ok=True)
    (out / "text-scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report["rows"], out / "text-scaling.png")
    log(f"[text-scaling] wrote {out / 'text-scaling.json'} and {out / 'text-scaling.png'}")
    return {"rows": report["rows"], "goals": goals}


def _row(method, verifier, n, correct, tokens, calls, vcalls, seconds) -> dict:
    k = len(correct)
    acc, se = mean_se(correct)
    return {"method": method, "verifier": verifier, "n": n, "accuracy": round(acc, 4), "se": round(se, 4),
            "problems": k, "tokens": round(sum(tokens) / k, 1), "model_calls": round(sum(calls) / k, 1),
            "verifier_calls": round(sum(vcalls) / k, 1),
            "seconds": round(sum(seconds) / len(seconds), 4) if seconds else None,
            "per_problem": [bool(c) for c in correct]}


ADAPTIVE_CONFIDENCE = {"self": 0.95, None: 0.6}  # a self-evaluation score; a vote share


def adaptive_rows(lm, state, verifiers, n, problems) -> list[dict]:
    """Adaptive sampling with budget `n`: with the self-evaluation verifier and by vote."""
    return [_real(lm, state, f"adaptive/{vname or 'vote'}", "adaptive", verifiers.get(vname), vname or "-", n,
                  problems, {"confidence": ADAPTIVE_CONFIDENCE[vname]}) for vname in ("self", None)]


def _real(lm, state, label, strategy, verifier, vname, n, problems, options) -> dict:
    """`strategy` run for real on every problem at budget `n` (each problem's run kept in `state`)."""
    from ponder.modalities.text import arith
    from ponder.search.scaling import get_strategy

    def one(p):
        res = get_strategy(strategy)(lm, p.prompt, verifier, n=n, seed=0, max_new_tokens=MAX_NEW_TOKENS, **options)
        return {"correct": res.best is not None and arith.is_correct(p.prompt, res.best.output),
                "tokens": res.compute.tokens, "calls": res.compute.model_calls,
                "vcalls": res.compute.verifier_calls, "seconds": res.compute.seconds,
                "used": res.config.get("samples_used", len(res.candidates))}

    runs = [state.get(f"real/{label}/{n}/{i}", lambda p=p: one(p)) for i, p in enumerate(problems)]
    row = _row(label, vname, n, [r["correct"] for r in runs], [r["tokens"] for r in runs],
               [r["calls"] for r in runs], [r["vcalls"] for r in runs], [r["seconds"] for r in runs])
    if strategy == "adaptive":  # Adaptive Inference-Time Compute reports the samples it spent
        row["mean_samples_used"] = round(sum(r["used"] for r in runs) / len(runs), 2)
    return row


def _find(rows, method, n):
    return next((r for r in rows if r["method"] == method and r["n"] == n), None)


def _diff(a: dict, b: dict) -> tuple[float, float]:
    """Paired accuracy difference a - b over the same problems, with its standard error."""
    return mean_se([float(x) - float(y) for x, y in zip(a["per_problem"], b["per_problem"])])


def _goals(rows, ns, step_ns, one_sample, mismatches) -> list[dict]:
    goals = []
    lo, hi = min(ns), max(ns)
    bo16 = next((r["seconds"] for r in rows if r["method"] == "best-of-n/orm" and r["n"] == 16), None)
    if bo16 is not None:
        ratio = bo16 / (sum(one_sample) / len(one_sample))
        goals.append(goal("best-of-16 (batched, ORM) wall time / one sample", "<= 3.0", ratio, ratio <= 3.0))
    prm = [_find(rows, "best-of-n/prm", n) for n in ns]
    drops = [f"{a['n']}->{b['n']}" for a, b in zip(prm, prm[1:]) if b["accuracy"] < a["accuracy"]]
    goals.append(goal("best-of-n/prm doublings where accuracy falls (" + (", ".join(drops) or "none") + ")",
                      "== 0", len(drops), not drops))
    d, se = _diff(prm[-1], prm[0])
    goals.append(goal(f"best-of-n/prm N={hi} - N={lo} accuracy, in standard errors ({d:+.3f} +- {se:.3f})",
                      "> 2", d / se if se else 0.0, se > 0 and d > 2 * se))
    n = 16 if 16 in ns else hi
    vote = _find(rows, "self-consistency", n)
    d, se = _diff(_find(rows, "best-of-n/prm", n), vote)
    goals.append(goal(f"best-of-n/prm - majority vote accuracy at N={n} (+- {se:.3f})", "> 0", d, d > 0))
    m = 16 if 16 in step_ns else max(step_ns)
    beam, particles = _find(rows, "beam/prm", m), _find(rows, "particles/prm", m)
    # the best-of-N budget whose generated tokens are nearest beam's (beam at N=16 draws about what
    # best-of-16 draws: "the largest N with no more tokens" would compare it with N=8 over a few tokens)
    matched = min(prm, key=lambda r: (abs(r["tokens"] - beam["tokens"]), r["n"]))
    d, se = _diff(beam, matched)
    goals.append(goal(f"beam/prm N={m} ({beam['tokens']:.0f} tokens) - best-of-n/prm N={matched['n']} "
                      f"({matched['tokens']:.0f} tokens) accuracy (+- {se:.3f})", ">= 0", d, d >= 0))
    d, se = _diff(particles, beam)
    goals.append(goal(f"particles/prm - beam/prm accuracy at N={m} (+- {se:.3f})", ">= 0", d, d >= 0))
    fixed = [r for r in rows if r["n"] == m and " T=" not in r["method"] and r["method"] not in
             ("coverage (exact)", "compute-optimal/prm")]
    best_fixed = max(fixed, key=lambda r: r["accuracy"])
    d, se = _diff(_find(rows, "compute-optimal/prm", m), best_fixed)
    goals.append(goal(f"compute-optimal/prm - best fixed strategy ({best_fixed['method']}) at N={m} (+- {se:.3f})",
                      ">= 0", d, d >= 0))
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
        axes[0].errorbar([r["n"] for r in mine], [r["accuracy"] for r in mine], yerr=[r["se"] for r in mine],
                         capsize=2, **style)
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
    fig.suptitle("ponder bench text-scaling: zoo:arith, held-out problems (bars: one standard error)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
