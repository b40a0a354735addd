"""Implementation efficiency: a decoder's measured speedup over the speedup its bare model calls predict.

Speculative decoders gain by emitting several tokens per target call and lose by what drafting and
verifying cost; how much of that loss is the model pair's (draft steps, wide verify passes) and how
much is the decoder's own loop (drafting bookkeeping, acceptance, rollback, emitting) is what this
module separates, for every ponder row of `ponder bench speculative`.

Cost model. During a side's warm-up run a `Census` records every bare model call by its shape
(`Call`): which model (target, draft, Medusa heads), what kind (a prefill; a forward of w tokens over
the KV cache — a plain step is w = 1, a chain verify pass w = 1 + its drafts, a draft step w = 1 or
2; or a tree pass of w nodes under a tree attention mask), the batch, the decoder layers run (fewer
than the model has: a layer-skip partial forward) and whether the cache carries a padding mask, with
the context length it ran at. `measure_costs` then times every shape apart, as one bare call through
the same `SequenceModel` interface (`prefill` / `forward`, the cache rolled back after each; the heads'
`head_logits`), at the census's mean context length, with the bench's single intra-op thread, best of
interleaved repeats. With c(shape) those costs and t the side's measured wall time:

    t_model(side)     = Σ over the side's calls of c(shape)
                      = prefills + S · c_verify + D · c_draft          (a chain at batch 1, S steps)
    predicted s/token = t_model(side) / tokens(side)
                      ≈ (c_verify(k + 1) + draft calls per step · c_draft) / tokens per step
    predicted_speedup = [t_model(plain) / tokens(plain)] / [t_model(side) / tokens(side)]
                        (plain: its prefills plus c_step(1) per token)
    efficiency        = speedup_vs_plain / predicted_speedup
                      = [t_model(side) / t(side)] / [t_model(plain) / t(plain)]
    bare_share        = t_model(side) / t(side)

The predicted speedup holds the pair's agreement (accepted lengths, tree sizes, draft calls) and the
costs of the calls that agreement buys; efficiency is 1 when a decoder spends no more time beyond its
bare calls, per second of them, than plain decoding does, and its shortfall is the decoder's loop
overhead. Prefills are in both sides' t_model, so a short generation does not read as overhead. Both
figures are ratios of ratios (micro-benchmarks against micro-benchmarks, interleaved sides against
interleaved sides), so machine load that drifts between the sides' runs and the micro-benchmarks
cancels; `bare_share` is absolute and does not.

Simplifications: a shape is timed at its mean context length (attention cost is close to linear in
it); a tree is timed with a binary-tree mask of its node count (the cost depends on the count, not the
shape); calls are timed warm, in a loop of the same shape, while in a decoder the first draft call after
a verify pass finds the draft's weights pushed out of the CPU caches (one check on the shared 2-core
machine, load ~2: +0.2 ms on a 0.9 ms zoo:arith-draft step, ~1.5 % of a speculative step), which
therefore counts as overhead; so does all work outside model calls (n-gram lookup, tree masks, acceptance), also for
train-free drafters whose whole draft is such work.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

HEADS = "heads"  # the kind (and default role) of a Medusa heads call
EXTEND = "extend"  # the kind of a hidden-state draft's call (Chimera / EAGLE style: `HiddenStateDraft.extend`)


@dataclass(frozen=True)
class Call:
    """The shape of one bare model call."""

    role: str  # which model ran: "target", "draft", "heads", "chimera" ... (the `Census` role names)
    kind: str  # "prefill" | "step" (causal over the cache) | "tree" (tree attention mask) | "heads" | "extend"
    batch: int  # rows
    width: int  # tokens fed per row (tree: nodes; heads: 1; extend: pairs)
    layers: int  # decoder layers that ran (fewer than the model has: layer skipping; heads, extend: 0)
    padded: bool = False  # the cache (or the prompts) carried a padding / hidden-position mask

    def label(self, full_layers: int | None = None) -> str:
        """A short name for reports: 'target step w=5', 'target 4/8 layers w=1', 'draft tree w=6 B=8'."""
        parts = [self.role]
        if full_layers is not None and self.kind not in (HEADS, EXTEND) and self.layers != full_layers:
            parts.append(f"{self.layers}/{full_layers} layers")
        if self.kind != HEADS:
            parts += [self.kind, f"w={self.width}"]
        if self.batch != 1:
            parts.append(f"B={self.batch}")
        if self.padded:
            parts.append("padded")
        return " ".join(parts)


Tally = dict  # Call -> [count, summed context length]


def _decoder_layers(module: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The decoder layer list of a transformers causal LM (Llama / Qwen2: .layers, GPT-2: .h)."""
    base = getattr(module, "base_model", module)
    for attr in ("layers", "h"):
        layers = getattr(base, attr, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    return None


def _is_heads(model) -> bool:
    from ponder.modalities.text.medusa import MedusaHeads

    return isinstance(model, MedusaHeads)


def _is_hidden_draft(model) -> bool:
    from ponder.search.core.capabilities import HiddenStateDraft

    return isinstance(model, HiddenStateDraft)


class Census:
    """Counts every bare model call of the models it watches, by shape, inside `recording()`.

    models: role -> a `TextModel` (its transformers module is hooked), `MedusaHeads` (each heads call
    runs its first block exactly once, which is hooked: `head_logits` calls `forward` directly) or a
    `HiddenStateDraft` such as a Chimera draft (its `extend` is wrapped). No hook stays in place outside
    `recording`, so timed runs carry none. A new kind of drafter adds its rule here and in `bare_call`;
    until then the bench reports a side whose `compute.draft_calls` the census did not see as
    `uncounted_draft_calls`, with no efficiency.
    """

    def __init__(self, models: dict[str, object]):
        self.models = {role: m for role, m in models.items() if m is not None}

    @contextmanager
    def recording(self) -> Iterator[Tally]:
        tally: Tally = {}
        handles = []
        wrapped = []
        for role, model in self.models.items():
            if _is_heads(model):
                handles.append(model.blocks[0].register_forward_pre_hook(self._heads_hook(role, tally)))
            elif _is_hidden_draft(model):
                model.extend = self._extend_counter(role, model.extend, tally)  # an instance attribute
                wrapped.append(model)
            else:
                handles.append(model.model.register_forward_pre_hook(self._lm_hook(role, model.model, tally),
                                                                     with_kwargs=True))
        try:
            yield tally
        finally:
            for handle in handles:
                handle.remove()
            for model in wrapped:
                del model.extend  # the class's method again

    @staticmethod
    def _extend_counter(role: str, extend, tally: Tally):
        def counted(state, hidden, next_tokens, counts):
            call = Call(role, EXTEND, int(hidden.shape[0]), int(hidden.shape[1]), 0)
            entry = tally.setdefault(call, [0, 0])
            entry[0] += 1
            lengths = getattr(state, "lengths", None)  # the protocol leaves the state opaque: Chimera's has them
            if lengths is not None:
                entry[1] += round(sum(torch.as_tensor(lengths).tolist()) / max(1, len(counts)))  # pairs cached
            return extend(state, hidden, next_tokens, counts)

        return counted

    @staticmethod
    def _lm_hook(role: str, module, tally: Tally):
        def hook(_module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            cache = kwargs.get("past_key_values", kwargs.get("cache"))
            context = int(cache.get_seq_length()) if cache is not None else 0
            mask = kwargs.get("attention_mask")
            layers = _decoder_layers(module)
            if context == 0:
                kind = "prefill"
            else:
                kind = "tree" if mask is not None and mask.dim() == 4 else "step"
            call = Call(role, kind, int(ids.shape[0]), int(ids.shape[1]), len(layers) if layers is not None else 0,
                        padded=mask is not None and mask.dim() == 2)
            entry = tally.setdefault(call, [0, 0])
            entry[0] += 1
            entry[1] += context

        return hook

    @staticmethod
    def _heads_hook(role: str, tally: Tally):
        def hook(_module, args):
            call = Call(role, HEADS, int(args[0].shape[0]), 1, 0)
            tally.setdefault(call, [0, 0])[0] += 1

        return hook


def merge(tallies: Sequence[Tally]) -> Tally:
    """One tally of every call in `tallies` (counts and context sums added)."""
    out: Tally = {}
    for tally in tallies:
        for call, (count, context) in tally.items():
            entry = out.setdefault(call, [0, 0])
            entry[0] += count
            entry[1] += context
    return out


def _tree_parents(batch: int, width: int) -> torch.Tensor:
    """[B, T] parents of a binary tree of `width` nodes (node i's parent (i - 1) // 2): a tree, not a chain."""
    parents = torch.tensor([-1] + [(i - 1) // 2 for i in range(1, width)], dtype=torch.long)  # [T]
    return parents.expand(batch, width).contiguous()


def bare_call(model, call: Call, context: int, tokens: Sequence[int]) -> tuple[Callable[[], None], Callable]:
    """(run, scope) for one bare call of `call`'s shape: `run()` makes the call once and leaves the cache
    as it found it; every timed loop runs inside a fresh `scope()` (layer skipping for partial forwards).

    model: the role's `TextModel` or `MedusaHeads`; context: cache length to run at; tokens: real token
    ids the inputs are cut from (repeated as needed)."""
    from ponder.kernels.tree import tree_mask

    if call.kind == HEADS:
        hidden = torch.zeros((call.batch, model.hidden_size))  # [B, H]
        return (lambda: model.head_logits(hidden)), nullcontext
    if call.kind == EXTEND:  # a hidden-state draft's cache of `context` pairs, extended by `width`, rolled back
        state = model.begin([tokens[0]] * call.batch)
        past = max(1, context)
        model.extend(state, torch.zeros((call.batch, past, model.hidden_size)),
                     torch.tensor([[tokens[i % len(tokens)] for i in range(past)]] * call.batch), [past] * call.batch)
        hidden = torch.zeros((call.batch, call.width, model.hidden_size))  # [B, W, H]
        after = torch.tensor([[tokens[i % len(tokens)] for i in range(call.width)]] * call.batch)  # [B, W]

        def run_extend():
            model.extend(state, hidden, after, [call.width] * call.batch)
            model.rollback(state, [past] * call.batch)

        return run_extend, nullcontext

    def ids(n: int) -> list[int]:
        return [tokens[i % len(tokens)] for i in range(n)]

    full = model.num_layers
    skip = list(range(1, full - 1))[: max(0, full - call.layers)]  # middle layers, as layer-skip drops
    if len(skip) != full - call.layers:
        raise ValueError(f"cannot run {call.layers} of {full} layers keeping the first and the last")

    def scope():
        return model.skipping_layers(skip) if skip else nullcontext()

    if call.kind == "prefill":
        rows = [ids(call.width) for _ in range(call.batch)]
        if call.padded and call.batch > 1:
            rows[-1] = rows[-1][1:]  # one shorter row: left padding and its mask

        def run_prefill():
            model.prefill(rows, model.new_cache())

        return run_prefill, scope
    context = max(1, context)
    cache = model.new_cache()
    model.prefill([ids(context)] * call.batch, cache)
    if call.padded:  # a hidden position (a rolled-back row): the adapter then builds masks and positions
        hidden = torch.zeros((call.batch, context), dtype=torch.bool)
        hidden[0, 0] = True
        cache.hide(hidden)
    feed = torch.tensor([ids(call.width)] * call.batch, dtype=torch.long)  # [B, W]
    mask = tree_mask(_tree_parents(call.batch, call.width)) if call.kind == "tree" else None  # [B, W, W]

    def run_forward():
        model.forward(feed, cache, attn_mask=mask)
        cache.truncate(context)

    return run_forward, scope


def measure_costs(models: dict[str, object], tally: Tally, tokens: Sequence[int], *, repeats: int = 3,
                  min_seconds: float = 0.02) -> dict[Call, float]:
    """Seconds per bare call for every shape in `tally` (see the module docstring).

    Every shape is warmed up and given an inner loop of about `min_seconds`; then `repeats` rounds
    time every shape in turn (interleaved, so drifting load hits all alike) and each keeps its best
    per-call time. models: role -> model as for `Census`."""
    bare = {}
    for call, (count, context_sum) in tally.items():
        bare[call] = bare_call(models[call.role], call, round(context_sum / max(1, count)), tokens)
    inner = {}
    for call, (run, scope) in bare.items():
        with scope():
            run()  # warm-up
            start = time.perf_counter()
            run()
            once = time.perf_counter() - start
        inner[call] = max(1, min(100, round(min_seconds / max(once, 1e-6))))
    best = {call: float("inf") for call in bare}
    for _ in range(repeats):
        for call, (run, scope) in bare.items():
            with scope():
                start = time.perf_counter()
                for _ in range(inner[call]):
                    run()
                best[call] = min(best[call], (time.perf_counter() - start) / inner[call])
    return best


def model_seconds(tally: Tally, costs: dict[Call, float], target_layers: int) -> dict:
    """A side's bare-call time, split: {"model_s", "prefill_s", "verify_s", "draft_s", "verify_calls",
    "verify_tokens"}. Verify: the target's full-depth forwards over the cache (plain's steps too);
    draft: draft-model calls, heads calls and the target's partial (layer-skipped) forwards."""
    out = dict(prefill_s=0.0, verify_s=0.0, draft_s=0.0, verify_calls=0, verify_tokens=0)
    for call, (count, _) in tally.items():
        seconds = count * costs[call]
        if call.kind == "prefill":
            out["prefill_s"] += seconds
        elif call.role == "target" and call.layers == target_layers:
            out["verify_s"] += seconds
            out["verify_calls"] += count
            out["verify_tokens"] += count * call.width
        else:
            out["draft_s"] += seconds
    out["model_s"] = out["prefill_s"] + out["verify_s"] + out["draft_s"]
    return out


def efficiency_fields(side: dict, plain: dict) -> dict:
    """predicted_speedup, efficiency and bare_share of `side` against `plain`.

    Each dict holds "tokens", "seconds" (measured wall time) and "model_s" (`model_seconds`)."""
    predicted = (plain["model_s"] / plain["tokens"]) / (side["model_s"] / side["tokens"])
    measured = (side["tokens"] / side["seconds"]) / (plain["tokens"] / plain["seconds"])
    return {"predicted_speedup": predicted, "efficiency": measured / predicted,
            "bare_share": side["model_s"] / side["seconds"]}


__all__ = ["Call", "Census", "EXTEND", "HEADS", "bare_call", "efficiency_fields", "measure_costs", "merge",
           "model_seconds"]
