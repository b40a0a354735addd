"""Continuous batching (ponder.search.decoding.continuous): requests that join and leave one running
batch decode what they decode alone, on a schedule that never depends on timing."""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch

import ponder
from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import candidate_generators
from ponder.search.decoding import plain
from ponder.search.decoding.continuous import RunningBatch, current_batch, own_time_offset

# (prompt, rows, sampling, max_new_tokens, stop after this character or None): prompts of different
# lengths, greedy and sampled rows, budgets that end rows at different steps, a stop rule
REQUESTS = [
    ("Q: 58+36-7*2\n", 2, SamplingParams(temperature=0.8), 64, None),
    ("Q: 1+2\n", 1, SamplingParams(temperature=0.0), 12, None),
    ("Q: 9*9-40+6\n", 3, SamplingParams(temperature=1.0, top_k=5), 64, None),
    ("Q: 71-8*6+5\n", 2, SamplingParams(temperature=0.7, top_p=0.9), 8, None),
    ("Q: 12+7*3\n", 2, SamplingParams(temperature=0.8), 40, "="),
    ("Q: 3*4-5\n", 1, SamplingParams(temperature=1.2), 3, None),
    ("Q: 58+36-7*2\n", 2, SamplingParams(temperature=0.8), 20, None),  # the first prompt again: a kept prefill
]


@pytest.fixture(scope="module")
def arith():
    return ponder.load("text", "zoo:arith")


def _decode(model, index: int, *, before=None):
    """Request `index` of REQUESTS through `plain` (alone, or joining the running batch of this thread)."""
    prompt, rows, sampling, budget, stop_char = REQUESTS[index]
    ids = model.encode(prompt)
    stop = None
    if stop_char is not None:
        stop_id = model.encode(stop_char)[-1]

        def stop(row, tokens):
            return tokens[-1] == stop_id
    if before is not None:
        before()
    return plain(model, [ids] * rows, sampling=sampling, max_new_tokens=budget,
                 generators=candidate_generators(100 + index, range(rows)), stop=stop)


def _check_same(fused, alone):
    assert fused.tokens == alone.tokens
    assert fused.stop_reasons == alone.stop_reasons
    for mine, theirs in zip(fused.logprobs, alone.logprobs):
        assert mine == pytest.approx(theirs, abs=1e-4)  # a batched forward rounds differently
    assert (fused.compute.model_calls, fused.compute.tokens) == (alone.compute.model_calls, alone.compute.tokens)


def test_requests_in_a_running_batch_decode_what_they_decode_alone(arith):
    alone = [_decode(arith, i) for i in range(len(REQUESTS))]
    assert {reason for d in alone for reason in d.stop_reasons} >= {"eos", "stop", "length"}
    batch = RunningBatch(arith, max_rows=6)  # fewer rows than all requests hold: some wait, then join mid-way
    fused = dict(batch.map([lambda i=i: _decode(arith, i) for i in range(len(REQUESTS))]))
    assert sorted(fused) == list(range(len(REQUESTS)))
    for index, decoded in fused.items():
        _check_same(decoded, alone[index])
    stats = batch.stats
    assert stats.requests == len(REQUESTS) and stats.alone == 0
    assert stats.steps < sum(d.compute.model_calls - 1 for d in alone)  # forwards were shared
    assert 1 < stats.rows_per_step <= 6
    assert stats.padding_positions > 0  # rows joined a batch already longer than their prompt
    assert stats.shared_prefills >= 1  # the repeated prompt reused its prefill
    assert all(d.compute.seconds > 0 for d in fused.values())


def test_the_schedule_and_the_outputs_do_not_depend_on_timing(arith):
    def run(jitter: bool):
        rng = random.Random(0)
        sleeps = {i: rng.random() * 0.02 if jitter else 0.0 for i in range(len(REQUESTS))}
        batch = RunningBatch(arith, max_rows=5)
        out = dict(batch.map([lambda i=i: _decode(arith, i, before=lambda i=i: time.sleep(sleeps[i]))
                              for i in range(len(REQUESTS))]))
        return [(out[i].tokens, out[i].logprobs) for i in range(len(REQUESTS))], batch.stats.to_dict()

    assert run(False) == run(True)


def test_a_request_the_model_rejects_fails_alone_and_its_batch_mates_finish(arith):
    def bad():
        return plain(arith, [[10**6] * 4], sampling=SamplingParams(), max_new_tokens=5,
                     generators=candidate_generators(0, [0]))

    def caught(fn):
        try:
            return fn()
        except Exception as err:  # what a job's worker does: the item fails, alone
            return err

    batch = RunningBatch(arith, max_rows=8)
    tasks = [lambda: caught(lambda: _decode(arith, 0)), lambda: caught(bad), lambda: caught(lambda: _decode(arith, 2))]
    out = dict(batch.map(tasks))
    assert isinstance(out[1], (IndexError, RuntimeError))
    _check_same(out[0], _decode(arith, 0))
    _check_same(out[2], _decode(arith, 2))
    assert batch.stats.alone == 1


def test_other_work_runs_in_its_task_turn_and_other_models_decode_alone(arith, llama):
    seen = []

    def no_decoding():
        seen.append(current_batch())
        return "done"

    def other_model():
        ids = llama.encode("Q: 1+2\n")
        return plain(llama, [ids], sampling=SamplingParams(temperature=0.0), max_new_tokens=4)

    batch = RunningBatch(arith)
    out = dict(batch.map([no_decoding, other_model, lambda: _decode(arith, 1)]))
    assert out[0] == "done" and seen == [batch]
    alone = plain(llama, [llama.encode("Q: 1+2\n")], sampling=SamplingParams(temperature=0.0), max_new_tokens=4)
    assert out[1].tokens == alone.tokens
    _check_same(out[2], _decode(arith, 1))
    assert batch.stats.requests == 1  # only the batch's own model joined it
    assert current_batch() is None and own_time_offset() == 0.0


def test_a_task_that_raises_reaches_the_caller_and_closing_early_releases_waiting_tasks(arith):
    def boom():
        raise ValueError("broken task")

    batch = RunningBatch(arith)
    with pytest.raises(ValueError, match="broken task"):
        list(batch.map([boom]))
    before = threading.active_count()
    batch = RunningBatch(arith, max_rows=64)
    results = batch.map([lambda i=i: _decode(arith, i) for i in (1, 2, 4)])
    first_index, _ = next(results)
    results.close()  # the other tasks were waiting on the batch: their threads end
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before


def test_bad_settings_are_one_clear_error(arith):
    with pytest.raises(ConfigError, match="max_rows"):
        RunningBatch(arith, max_rows=0)


def test_a_text_cache_joins_rows_right_aligned_and_hides_the_padding(arith):
    alone = arith.new_cache()
    long_ids, short_ids = arith.encode("Q: 58+36-7*2\n"), arith.encode("Q: 1\n")
    arith.prefill([long_ids], alone)
    short = arith.new_cache()
    short_logits = arith.prefill([short_ids], short)
    running = arith.new_cache()
    running.join(alone)
    running.join(short)
    pad = len(long_ids) - len(short_ids)
    assert running.length == len(long_ids) and running.batch_size == 2
    assert running.attention_mask[1].tolist() == [0] * pad + [1] * len(short_ids)
    token = torch.tensor([[int(short_logits.argmax())]] * 2)
    joined = arith.forward(token, running)[1, -1]
    by_itself = arith.forward(token[:1], short)[0, -1]
    assert torch.allclose(joined, by_itself, atol=1e-4)  # the same logits as alone, up to rounding
    running.reorder(torch.tensor([1]))  # the long row leaves: its extra positions are padding nobody reads
    assert running.leading_padding() == pad
    running.drop_leading(pad)
    assert running.length == len(short_ids) + 1 and running.attention_mask is None
    again = arith.forward(token[:1], running)[0, -1]
    assert torch.allclose(again, arith.forward(token[:1], short)[0, -1], atol=1e-4)


def test_a_batch_server_fuses_callers_on_many_threads_and_hands_back_their_errors(arith):
    from ponder.search.decoding.continuous import BatchServer

    server = BatchServer(max_rows=16)
    try:
        results: dict[int, object] = {}

        def call(i):
            results[i] = server.run(lambda: _decode(arith, i))

        # while a first caller's task holds the turn, four more callers queue up: they all join one batch
        busy = threading.Thread(target=lambda: server.run(lambda: time.sleep(0.3)))
        busy.start()
        time.sleep(0.05)
        callers = [threading.Thread(target=call, args=(i,)) for i in (0, 1, 2, 3)]
        for thread in callers:
            thread.start()
        for thread in [busy, *callers]:
            thread.join(timeout=60)
        for i in (0, 1, 2, 3):
            _check_same(results[i], _decode(arith, i))
        stats = server.batch.stats
        assert stats.requests == 4 and stats.rows_per_step > 1
        assert stats.steps < sum(_decode(arith, i).compute.model_calls - 1 for i in (0, 1, 2, 3))
        with pytest.raises(ZeroDivisionError):
            server.run(lambda: 1 / 0)
        assert server.run(lambda: _decode(arith, 1)).tokens == _decode(arith, 1).tokens  # still serving
    finally:
        server.close()
    with pytest.raises(RuntimeError, match="closed"):
        server.run(lambda: None)
