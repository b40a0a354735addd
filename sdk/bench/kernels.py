"""`ponder bench kernels`: the shared-prefix (cascade) cache, forked step-search caches and Recycled
Attention against today's path, in one run; `--device cuda` times the attention kernels themselves.

CPU mode (the default), every figure a ratio against a baseline measured in the same run:

* **best-of-64**: 64 candidates x 32 new tokens (EOS ignored, T = 1, candidate i seeded (0, i))
  after a 200-token prompt (zoo:arith: held-out worked problems, then a question) and a
  1500-token prompt (zoo:pycode: a held-out stdlib file). Today's path (transformers' sdpa, the
  prompt copied into every row) against ponder's plan path (`attention="reference"`: one prompt
  copy, cascade attention). KV bytes allocated are the cache buffers' peak; KV bytes read per
  decode step are the keys and values each step hands the attention kernel (today: every row's
  whole length; cascade: the prompt once plus each row's suffix). The ideal ratio of both is
  N(P+G) / (P+NG); the goal is >= 90 % of it, and the whole run's wall time <= 0.7x today's. A
  paged row replays the same allocation through `PagedKVCache` (page size 16: one prompt copy
  shared by 64 forks, copy-on-write into the shared last page). The prompt cache is off for the
  timed sides; a last figure times the cascade side again with it on (the prompt seen before).
* **step searches**: beam search (beam width 4) and particle filtering at N = 16 with the PRM on
  held-out arith problems: forked caches on the plan path against today's re-prefill, each
  against best-of-16 on the same path (goal: <= 1.5x best-of-16's wall time, same outputs). The
  PRM's own share of the wall time is reported: it re-reads prompt + partial every round either way.
* **Recycled Attention**: greedy continuation of held-out pycode files (1500-token prompts) under
  full attention and under Recycled Attention (stride 8, top-k 256, first 2 layers dense):
  tokens/s ratio, and top-1 agreement with full attention when both are fed the full-attention
  tokens (teacher forcing), with its standard error.

GPU mode (``--device cuda``): achieved bandwidth of one decode step (K/V bytes / time) for the
split-K Triton kernel against sdpa, flex and xformers at contexts 1k-128k and batch 1-64, as a
fraction of the device's measured copy bandwidth; and the cascade speedup for 64 rows sharing a
prompt. `kernel_bandwidth` is the measurement itself, device-agnostic (the tests run it on CPU).
"""

from __future__ import annotations

import math
import time

import torch

from ponder.bench import goal
from ponder.bench.text_overhead import NoEOS

NEW_TOKENS = 32
CANDIDATES = 64


class _Recorded(NoEOS):
    """The same text model with no EOS (every row emits exactly max_new_tokens), recording the
    cache's peak allocation and the KV bytes each decode step's attention is handed."""

    def __init__(self, model):
        super().__init__(model)
        self.peak, self.reads = 0, []

    def recycling(self, **options):
        return self._model.recycling(**options)

    def prefill(self, prompt_ids, cache):
        logits = self._model.prefill(prompt_ids, cache)
        self.peak = max(self.peak, cache.allocated_bytes())
        return logits

    def forward(self, tokens, cache, attn_mask=None):
        logits = self._model.forward(tokens, cache, attn_mask)
        self.peak = max(self.peak, cache.allocated_bytes())
        self.reads.append(cache.read_bytes())
        return logits


def _arith_prompt(model, tokens: int = 200) -> str:
    """A `tokens`-token arith prompt: held-out worked problems, cut to fit, then one question."""
    from ponder.modalities.text import arith

    problems = arith.problems("heldout", 40, seed=11)
    question = problems[-1].prompt
    context = model.encode("".join(p.prompt + p.solution() for p in problems[:-1]))
    room = tokens - len(model.encode(question))
    prompt = model.decode(context[len(context) - room:]).lstrip() + question
    while len(model.encode(prompt)) > tokens:  # a cut inside a token can re-tokenise longer
        prompt = prompt[1:]
    return prompt


def _pycode_prompts(model, count: int, tokens: int = 1500, new_tokens: int = NEW_TOKENS) -> list[str]:
    from ponder.bench.pycode_workload import pycode_workload

    return pycode_workload(model, count=count, prompt_tokens=tokens, max_new_tokens=new_tokens).prompts


def _sample_all(model, ids: list[int]):
    """Best-of-64's sampling: 64 rows of one prompt, 32 tokens each; (seconds, tokens, recorder)."""
    from ponder.kernels.sampling import SamplingParams, make_generators
    from ponder.search.decoding import plain

    recorder = _Recorded(model)
    start = time.perf_counter()
    decoded = plain(recorder, [ids] * CANDIDATES, sampling=SamplingParams(temperature=1.0),
                    max_new_tokens=NEW_TOKENS, generators=make_generators(0, range(CANDIDATES)))
    return time.perf_counter() - start, decoded.tokens, recorder


def _paged_bytes(model, prompt_length: int) -> int:
    """Live bytes of `PagedKVCache` after one prompt row, 63 forks and 32 appended positions each."""
    from ponder.kernels.attention import PagedKVCache

    config = model.model.config
    heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cache = PagedKVCache(model.num_layers, heads, head_dim, page_size=16)
    (row,) = cache.add_rows(1)
    layers = model.num_layers

    def block(rows, count):
        return torch.zeros(layers, rows, heads, count, head_dim)

    cache.append([row], block(1, prompt_length), block(1, prompt_length))
    cache.fork(row, CANDIDATES - 1)
    rows = list(range(CANDIDATES))
    for _ in range(NEW_TOKENS - 1):  # the last sampled token is never fed
        cache.append(rows, block(CANDIDATES, 1), block(CANDIDATES, 1))
    return cache.live_bytes()


def _best_of_64(workload: str, spec: str, prompt_of, repeats: int) -> tuple[list[dict], list[dict]]:
    import ponder

    today, planned = ponder.load("text", spec), ponder.load("text", spec, attention="reference")
    planned.prompt_cache_bytes = 0  # every repeat prefills, as today's path does
    prompt = prompt_of(today)
    ids = today.encode(prompt)
    _sample_all(today, ids), _sample_all(planned, ids)  # warm-up
    times = {"today": [], "cascade": []}
    runs = {}
    for _ in range(repeats):  # interleaved, best of each
        for side, model in (("today", today), ("cascade", planned)):
            seconds, tokens, recorder = _sample_all(model, ids)
            times[side].append(seconds)
            runs[side] = (tokens, recorder)
    planned.prompt_cache_bytes = 256 * 2**20  # the prompt cache: a repeated prompt skips its prefill
    _sample_all(planned, ids)
    kept_prompt = min(_sample_all(planned, ids)[0] for _ in range(repeats))
    p, g, n = len(ids), NEW_TOKENS, CANDIDATES
    ideal = n * (p + g) / (p + n * g)
    (tokens_a, rec_a), (tokens_b, rec_b) = runs["today"], runs["cascade"]
    alloc = rec_a.peak / rec_b.peak
    read = (sum(rec_a.reads) / len(rec_a.reads)) / (sum(rec_b.reads) / len(rec_b.reads))
    wall = min(times["cascade"]) / min(times["today"])
    same = sum(a == b for a, b in zip(tokens_a, tokens_b)) / n
    paged = _paged_bytes(today, p)
    rows = [{"part": "best-of-64", "workload": workload, "prompt_tokens": p, "new_tokens": g,
             "today_alloc_MiB": round(rec_a.peak / 2**20, 2), "cascade_alloc_MiB": round(rec_b.peak / 2**20, 2),
             "paged_live_MiB": round(paged / 2**20, 2), "alloc_ratio": round(alloc, 3),
             "paged_ratio": round(rec_a.peak / paged, 3), "read_ratio": round(read, 3), "ideal": round(ideal, 3),
             "today_s": round(min(times["today"]), 3), "cascade_s": round(min(times["cascade"]), 3),
             "wall_ratio": round(wall, 3), "same_samples": round(same, 4),
             "cascade_repeated_prompt_s": round(kept_prompt, 3)}]
    goals = [
        goal(f"{workload} P={p}: KV bytes allocated today / cascade (ideal {ideal:.2f})",
             f">= {0.9 * ideal:.2f}", alloc, alloc >= 0.9 * ideal),
        goal(f"{workload} P={p}: KV bytes read per decode step today / cascade (ideal {ideal:.2f})",
             f">= {0.9 * ideal:.2f}", read, read >= 0.9 * ideal),
        goal(f"{workload} P={p}: best-of-64 wall time cascade / today", "<= 0.7", wall, wall <= 0.7),
        goal(f"{workload} P={p}: same sampled candidates as today (T=1)", ">= 0.95", same, same >= 0.95),
    ]
    return rows, goals


class _TimedVerifier:
    """A process verifier that adds up the seconds it spends (the PRM's share of a search)."""

    def __init__(self, verifier):
        self._verifier, self.seconds = verifier, 0.0
        self.name = getattr(verifier, "name", "prm")

    def score(self, prompt, outputs):
        start = time.perf_counter()
        try:
            return self._verifier.score(prompt, outputs)
        finally:
            self.seconds += time.perf_counter() - start

    def score_steps(self, prompt, partials):
        start = time.perf_counter()
        try:
            return self._verifier.score_steps(prompt, partials)
        finally:
            self.seconds += time.perf_counter() - start


def _step_searches(count: int) -> tuple[list[dict], list[dict]]:
    import ponder
    from ponder.modalities.text import arith

    today, planned = ponder.load("text", "zoo:arith"), ponder.load("text", "zoo:arith", attention="reference")
    planned.prompt_cache_bytes = 0  # each search prefills its prompt, as today's path does
    prm = ponder.load_verifier("text", "prm", model=today)
    prompts = [p.prompt for p in arith.problems("heldout", count, seed=5)]
    sides = {
        "best-of-16 today": (today, "best-of-n", {}),
        "best-of-16 cascade": (planned, "best-of-n", {}),
        "beam today (re-prefill)": (today, "beam", {"beam_width": 4, "fork_cache": False}),
        "beam forked": (planned, "beam", {"beam_width": 4, "fork_cache": True}),
        "particles today (re-prefill)": (today, "particles", {"fork_cache": False}),
        "particles forked": (planned, "particles", {"fork_cache": True}),
    }
    seconds = {name: 0.0 for name in sides}
    verifier_seconds = {name: 0.0 for name in sides}
    outputs = {name: [] for name in sides}
    ponder.generate(planned, prompts[0], strategy="beam", n=16, verifier=prm, beam_width=4, max_new_tokens=8)  # warm-up
    for prompt in prompts:  # interleaved prompt by prompt
        for name, (model, strategy, extra) in sides.items():
            timed = _TimedVerifier(prm)
            start = time.perf_counter()
            result = ponder.generate(model, prompt, strategy=strategy, n=16, verifier=timed, seed=1,
                                     max_new_tokens=64, **extra)
            seconds[name] += time.perf_counter() - start
            verifier_seconds[name] += timed.seconds
            outputs[name].append([c.output for c in result.candidates])
    rows, goals = [], []
    for name in sides:
        base = "best-of-16 cascade" if "forked" in name or "cascade" in name else "best-of-16 today"
        rows.append({"part": "step search", "side": name, "problems": count, "seconds": round(seconds[name], 3),
                     "verifier_s": round(verifier_seconds[name], 3),
                     "vs_best_of_16": round(seconds[name] / seconds[base], 3)})
    for strategy in ("beam", "particles"):
        forked, redone = f"{strategy} forked", f"{strategy} today (re-prefill)"
        ratio = seconds[forked] / seconds["best-of-16 cascade"]
        same = sum(a == b for a, b in zip(outputs[forked], outputs[redone])) / count
        goals.append(goal(f"{strategy} N=16 forked: wall time / best-of-16's", "<= 1.5", ratio, ratio <= 1.5))
        goals.append(goal(f"{strategy} N=16: forked / re-prefill wall time", "< 1",
                          seconds[forked] / seconds[redone], seconds[forked] < seconds[redone]))
        goals.append(goal(f"{strategy} N=16: same outputs forked as re-prefilled (share of problems)", "1.0",
                          same, same == 1.0))
    return rows, goals


def _recycled(count: int, stride: int = 8, top_k: int = 256, dense_layers: int = 2,
              new_tokens: int = 64) -> tuple[list[dict], list[dict]]:
    import ponder
    from ponder.kernels.sampling import SamplingParams
    from ponder.search.decoding import plain, recycled

    model = ponder.load("text", "zoo:pycode")
    prompts = [model.encode(p) for p in _pycode_prompts(model, count, new_tokens=new_tokens)]
    greedy = SamplingParams(temperature=0.0)
    no_eos = _Recorded(model)
    plain(no_eos, prompts[:1], sampling=greedy, max_new_tokens=4)  # warm-up
    full_s = recycled_s = 0.0
    agree = []
    kept = []
    for ids in prompts:
        start = time.perf_counter()
        reference = plain(no_eos, [ids], sampling=greedy, max_new_tokens=new_tokens).tokens[0]
        full_s += time.perf_counter() - start
        start = time.perf_counter()
        recycled(no_eos, [ids], sampling=greedy, max_new_tokens=new_tokens, stride=stride, keep=top_k,
                 dense_layers=dense_layers)
        recycled_s += time.perf_counter() - start
        # teacher forcing: both fed the full-attention tokens; does Recycled Attention pick the same next one?
        with torch.inference_mode(), model.recycling(stride=stride, top_k=top_k, dense_layers=dense_layers) as state:
            cache = model.new_cache()
            logits = model.prefill([ids], cache)
            for position, token in enumerate(reference):
                agree.append(int(logits.argmax(-1)) == token)
                if position + 1 == len(reference):
                    break
                logits = model.forward(torch.tensor([[token]]), cache)[:, -1]
                if (position + 1) % stride:  # a recycled step: how much of the context it read
                    kept.append(state.kept_fraction())
    rate = sum(agree) / len(agree)
    error = math.sqrt(rate * (1 - rate) / len(agree))
    speed = full_s / recycled_s
    rows = [{"part": "recycled attention", "prompts": count, "prompt_tokens": len(prompts[0]),
             "new_tokens": new_tokens, "stride": stride, "keep": top_k, "dense_layers": dense_layers,
             "full_s": round(full_s, 3), "recycled_s": round(recycled_s, 3), "speed_ratio": round(speed, 3),
             "top1_agreement": round(rate, 4), "agreement_se": round(error, 4),
             "kept_fraction": round(sum(kept) / max(1, len(kept)), 4)}]
    goals = [goal(f"Recycled Attention (stride {stride}, keep {top_k}): decode speed / full attention (reported)",
                  "reported", speed, True),
             goal(f"Recycled Attention: top-1 agreement with full attention, teacher-forced (+- {error:.3f})",
                  "reported", rate, True)]
    return rows, goals


# ---------------------------------------------------------------------------------------- GPU mode


def copy_bandwidth(device: torch.device, megabytes: int = 256) -> float:
    """Bytes per second of a device-to-device copy (read + write), best of a few: the peak the
    kernels' achieved bandwidth is a fraction of."""
    source = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    best = math.inf
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        target.copy_(source)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * source.element_size() / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (and compile)
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def kernel_bandwidth(device: str | torch.device, *, contexts, batches, backends, heads: int = 32,
                     kv_heads: int = 8, head_dim: int = 128, dtype: torch.dtype = torch.float16,
                     splits: int = 8, repeats: int = 5, budget_bytes: int = 24 * 2**30) -> list[dict]:
    """One decode step (T = 1) of each backend over each (context, batch): K/V bytes read / time.

    Rows whose K/V would exceed `budget_bytes` are skipped; a backend that cannot run here is
    reported with its reason instead of a figure."""
    from ponder.kernels.attention import AttentionPlan, attend, get_backend

    device = torch.device(device)
    peak = copy_bandwidth(device)
    rows = []
    for context in contexts:
        for batch in batches:
            kv_bytes = 2 * batch * kv_heads * context * head_dim * torch.empty((), dtype=dtype).element_size()
            if kv_bytes > budget_bytes:
                continue
            generator = torch.Generator(device=device).manual_seed(0)
            query = torch.randn(batch, heads, 1, head_dim, dtype=dtype, device=device, generator=generator)
            key = torch.randn(batch, kv_heads, context, head_dim, dtype=dtype, device=device, generator=generator)
            value = torch.randn_like(key)
            lengths = torch.full((batch,), context, dtype=torch.long, device=device)
            for name in backends:
                why = get_backend(name).unavailable_reason(device)
                row = {"part": "bandwidth", "backend": name, "context": context, "batch": batch}
                if why is not None:
                    rows.append({**row, "note": why})
                    continue
                plan = AttentionPlan(lengths=lengths, kv_length=context, num_queries=1,
                                     num_splits=splits if name == "triton" else 1)
                seconds = _timed(lambda q=query, k=key, v=value, p=plan, b=name: attend(q, k, v, p, backend=b),
                                 device, repeats)
                rows.append({**row, "seconds": seconds, "GB_s": round(kv_bytes / seconds / 1e9, 2),
                             "fraction_of_copy_bw": round(kv_bytes / seconds / peak, 4)})
    return rows


def cascade_speedup(device: str | torch.device, *, rows: int = 64, prefix: int = 16384, suffix: int = 256,
                    backend: str = "triton", heads: int = 32, kv_heads: int = 8, head_dim: int = 128,
                    dtype: torch.dtype = torch.float16, repeats: int = 5) -> dict:
    """`rows` rows sharing a `prefix`-token prompt: flat attention over each row's copy of it (sdpa)
    against the prefix read once (cascade, by `backend`); one decode step."""
    from ponder.kernels.attention import AttentionPlan, attend

    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)
    query = torch.randn(rows, heads, 1, head_dim, dtype=dtype, device=device, generator=generator)
    prefix_key = torch.randn(1, kv_heads, prefix, head_dim, dtype=dtype, device=device, generator=generator)
    prefix_value = torch.randn_like(prefix_key)
    key = torch.randn(rows, kv_heads, suffix, head_dim, dtype=dtype, device=device, generator=generator)
    value = torch.randn_like(key)
    lengths = torch.full((rows,), suffix, dtype=torch.long, device=device)
    plan = AttentionPlan(lengths=lengths, kv_length=suffix, num_queries=1, prefix_length=prefix)
    flat_plan = AttentionPlan(lengths=lengths + prefix, kv_length=prefix + suffix, num_queries=1)
    flat_key = torch.cat([prefix_key.expand(rows, -1, -1, -1), key], dim=2)
    flat_value = torch.cat([prefix_value.expand(rows, -1, -1, -1), value], dim=2)
    flat = _timed(lambda: attend(query, flat_key, flat_value, flat_plan, backend="sdpa"), device, repeats)
    cascade = _timed(lambda: attend(query, key, value, plan, prefix_key, prefix_value, backend=backend),
                     device, repeats)
    return {"part": "cascade", "backend": backend, "rows": rows, "prefix": prefix, "suffix": suffix,
            "flat_sdpa_s": flat, "cascade_s": cascade, "speedup": round(flat / cascade, 3)}


def _gpu(device: torch.device, quick: bool) -> tuple[list[dict], list[dict]]:
    if device.type != "cuda" or not torch.cuda.is_available():
        from ponder.errors import ConfigError

        raise ConfigError(f"bench kernels --device {device} needs a CUDA GPU, and torch sees none here; "
                          "run it without --device for the CPU figures")
    contexts = [1024, 8192, 32768] if quick else [1024, 4096, 16384, 65536, 131072]
    batches = [1, 8] if quick else [1, 8, 64]
    rows = kernel_bandwidth(device, contexts=contexts, batches=batches,
                            backends=("sdpa", "flex", "triton", "xformers"))
    rows.append(cascade_speedup(device))
    name = torch.cuda.get_device_name(device)
    for row in rows:
        row["gpu"] = name
    goals = []
    split = [r for r in rows if r.get("backend") == "triton" and "fraction_of_copy_bw" in r]
    if split:
        best = max(r["fraction_of_copy_bw"] for r in split)
        goals.append(goal(f"split-K best achieved bandwidth / copy bandwidth on {name} (reported)", "reported",
                          best, True))
    goals.append(goal(f"cascade speedup, 64 rows sharing 16k tokens, on {name} (reported)", "reported",
                      rows[-1]["speedup"], True))
    return rows, goals


def run(quick: bool = False, plot_dir=None, device: str | None = None) -> dict:
    if device not in (None, "cpu"):
        rows, goals = _gpu(torch.device(device), quick)
        return {"rows": rows, "goals": goals}
    from tqdm import tqdm

    parts = [
        ("best-of-64 arith", lambda: _best_of_64("arith", "zoo:arith", _arith_prompt, 1 if quick else 2)),
        ("best-of-64 pycode", lambda: _best_of_64("pycode", "zoo:pycode",
                                                  lambda m: _pycode_prompts(m, 1)[0], 1 if quick else 2)),
        ("step searches", lambda: _step_searches(2 if quick else 8)),
        ("recycled attention", lambda: _recycled(1 if quick else 4)),
    ]
    rows, goals = [], []
    progress = tqdm(parts, desc="bench kernels", unit="part")
    for label, part in progress:
        progress.set_postfix_str(label)
        part_rows, part_goals = part()
        rows += part_rows
        goals += part_goals
    return {"rows": rows, "goals": goals}
