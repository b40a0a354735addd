"""ponder's attention inside real text models, end to end: through the plan and the shared-prefix
cache (`attention="reference"`), and with forked step-search caches, every decoder and strategy gives
what transformers' own sdpa path (today's) gives — the same greedy tokens, logits at float32's noise
floor (within 5e-5 of logits of size ~12; transformers' eager and sdpa differ by 7e-6 on the same
steps), the same samples at T = 1 — while the prompt's keys are stored and read once."""

import warnings

import pytest
import torch

import ponder
from ponder.cli import main
from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams, make_generators
from ponder.modalities.text.model import TextModel, prefix_cache_class
from ponder.search.decoding import DECODERS, get_decoder
from ponder.search.decoding.outputs import prefill_shared

PROMPT = "Q: 58+36-7*2\n"


@pytest.fixture(scope="module")
def arith():
    """zoo:arith on today's path and on ponder's plan path (reference backend)."""
    return ponder.load("text", "zoo:arith"), ponder.load("text", "zoo:arith", attention="reference")


@pytest.fixture(scope="module")
def drafts():
    return {"draft": ponder.load("text", "zoo:arith-draft", attention="reference"),
            "medusa": ponder.load("text", "zoo:arith-medusa"), "chimera": ponder.load("text", "zoo:arith-chimera")}


def _draft_for(name, drafts):
    if name in ("medusa", "chimera"):
        return drafts[name]
    if name in ("speculative", "spec-adaptive", "tree", "dyspec", "rsd", "spectr", "auto", "bild", "ead", "rapid"):
        return drafts["draft"]
    return None


def test_shared_prefix_logits_match_todays_path_step_by_step(arith):
    today, planned = arith
    prompt = today.encode(PROMPT)
    caches = today.new_cache(), planned.new_cache()
    logits = [prefill_shared(model, [prompt] * 4, cache) for model, cache in zip(arith, caches)]
    assert caches[1].prefix_length == len(prompt) and caches[0].prefix_length == 0
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=5e-5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        tokens = torch.randint(3, 90, (4, 1), generator=generator)
        logits = [model.forward(tokens, cache) for model, cache in zip(arith, caches)]
        torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=5e-5)
    # the prompt is stored once, not once per row
    assert caches[1].allocated_bytes() < caches[0].allocated_bytes() / 2


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_every_decoder_gives_todays_greedy_tokens_through_the_plan(arith, drafts, name):
    prompt = arith[0].encode(PROMPT)
    tokens = []
    for model in arith:
        decoded = get_decoder(name)(model, [prompt] * 3, sampling=SamplingParams(temperature=0.0),
                                    max_new_tokens=20, generators=make_generators(0, range(3)),
                                    draft=_draft_for(name, drafts))
        tokens.append(decoded.tokens)
    assert tokens[0] == tokens[1]
    assert any(len(row) > 5 for row in tokens[0])


@pytest.mark.parametrize("strategy, extra", [("best-of-n", {}), ("beam", {"beam_width": 4}), ("particles", {}),
                                             ("dvts", {"beam_width": 4})])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_strategies_through_the_plan_and_forked_caches_match_todays_re_prefill(arith, strategy, extra, temperature):
    today, planned = arith
    fork = {} if strategy == "best-of-n" else {"fork_cache": False}
    runs = [ponder.generate(today, PROMPT, strategy=strategy, n=16, verifier="prm", seed=2, max_new_tokens=40,
                            temperature=temperature, **extra, **fork)]
    for model in arith:
        forked = {} if strategy == "best-of-n" else {"fork_cache": True}
        runs.append(ponder.generate(model, PROMPT, strategy=strategy, n=16, verifier="prm", seed=2,
                                    max_new_tokens=40, temperature=temperature, **extra, **forked))
    outputs = [[c.output for c in run.candidates] for run in runs]
    same = [sum(a == b for a, b in zip(outputs[0], other)) / len(outputs[0]) for other in outputs[1:]]
    if temperature == 0.0:
        assert outputs[1] == outputs[0] and outputs[2] == outputs[0]
    else:
        assert min(same) >= 0.95, same
    if strategy != "best-of-n":
        assert runs[1].config["fork_cache"] is True and runs[0].config["fork_cache"] is False
        # forking feeds each round only the pending token: fewer tokens through the model than re-prefill
        assert runs[1].compute.model_calls <= runs[0].compute.model_calls


def test_forked_rounds_keep_the_cache_and_hide_riders(arith):
    """Round two resumes round one's cache: the prompt is never prefilled again."""
    from ponder.search.core import Compute
    from ponder.search.scaling.steps import Partial, Stepper

    _, planned = arith
    calls = []
    original = planned.prefill

    def counting_prefill(prompt_ids, cache):
        calls.append(len(prompt_ids))
        return original(prompt_ids, cache)

    planned.prefill = counting_prefill
    try:
        stepper = Stepper(planned, PROMPT, seed=0, compute=Compute(), max_new_tokens=30,
                          sampling=SamplingParams(temperature=1.0))
        partials = stepper.extend([Partial(origin=j) for j in range(6)])
        survivors = [p.copy() for p in partials[:2] if not p.done for _ in range(3)]
        stepper.extend(survivors)
    finally:
        del planned.prefill
    assert calls == [1]  # one shared prefill in round one, none after
    assert stepper._cache.prefix_length == len(planned.encode(PROMPT))


def test_prefix_cache_unshares_when_an_operation_reaches_into_the_prompt(arith):
    _, planned = arith
    prompt = planned.encode(PROMPT)
    cache = planned.new_cache()
    assert isinstance(cache, prefix_cache_class())
    prefill_shared(planned, [prompt] * 3, cache)
    planned.forward(torch.tensor([[5], [6], [7]]), cache)
    before = planned.forward(torch.tensor([[8], [9], [10]]), cache)
    length = cache.length
    # hiding a prompt position in one row gives each row its own copy, same contents
    hidden = torch.zeros((3, length), dtype=torch.bool)
    cache.truncate(length - 1)
    assert cache.prefix_length == len(prompt)
    cache.truncate(len(prompt) - 2)  # into the prompt: unshared
    assert cache.prefix_length == 0 and cache.length == len(prompt) - 2
    fresh = planned.new_cache()
    prefill_shared(planned, [prompt] * 3, fresh)
    hidden = torch.zeros((3, fresh.length), dtype=torch.bool)
    hidden[1, 2] = True
    fresh.hide(hidden)
    assert fresh.prefix_length == 0 and fresh.batch_size == 3
    assert torch.isfinite(before).all()


def test_a_bad_or_unavailable_attention_name_is_one_clear_error():
    with pytest.raises(ConfigError, match="attention 'fast' is not allowed; use one of sdpa, reference"):
        ponder.load("text", "zoo:arith", attention="fast")
    with pytest.raises(ConfigError, match="attention 'xformers' cannot run here"):
        ponder.load("text", "zoo:arith", attention="xformers")


def test_a_model_outside_transformers_attention_registry_falls_back_to_sdpa_with_a_note(arith):
    from transformers import LlamaForCausalLM

    class Unrouted(LlamaForCausalLM):
        _supports_attention_backend = False

    today, _ = arith
    model = Unrouted(today.model.config)
    model.load_state_dict(today.model.state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrapped = TextModel(model, today.tokenizer, attention="reference")
    assert wrapped.attention == "sdpa"
    assert any("does not dispatch its attention" in str(w.message) for w in caught)


def test_other_architectures_route_through_the_plan(tiny_folder):
    today, planned = TextModel.from_folder(tiny_folder), TextModel.from_folder(tiny_folder, attention="reference")
    assert planned.attention == "reference"
    prompt = today.encode("Q: 1+2\n")
    tokens = [get_decoder("plain")(m, [prompt] * 2 + [prompt[:3]], sampling=SamplingParams(temperature=0.0),
                                   max_new_tokens=8).tokens for m in (today, planned)]
    assert tokens[0] == tokens[1]


def test_cli_and_job_files_take_attention(capsys):
    from ponder.jobs import parse_job
    from ponder.request import request_from_item

    code = main(["generate", "text", "--model", "zoo:arith", "--prompt", PROMPT, "--attention", "reference",
                 "--n", "4", "--strategy", "best-of-n", "--verifier", "prm", "--max-new-tokens", "16", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "--attention NAME" in _help(capsys)
    code = main(["generate", "text", "--model", "zoo:arith", "--prompt", PROMPT, "--attention", "nope"])
    _, err = capsys.readouterr()
    assert code == 2 and "attention 'nope' is not allowed" in err
    job = parse_job({"defaults": {"modality": "text", "model": "zoo:arith", "options": {"attention": "reference"}},
                     "items": [{"id": "a", "prompt": PROMPT}]})
    assert request_from_item(job.items[0].spec()).load_options == {"attention": "reference"}
    with pytest.raises(ConfigError, match="attention 'nope' is not allowed"):
        parse_job({"defaults": {"modality": "text", "model": "zoo:arith", "options": {"attention": "nope"}},
                   "items": [{"id": "a", "prompt": PROMPT}]})


def _help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["generate", "text", "--help"])
    return capsys.readouterr().out


def test_recycled_attention_is_exact_when_it_keeps_everything_and_lossy_otherwise(arith):
    today, planned = arith
    prompt = today.encode(PROMPT)
    greedy = SamplingParams(temperature=0.0)
    base = get_decoder("plain")(today, [prompt] * 2, sampling=greedy, max_new_tokens=24).tokens
    for model in arith:
        kept_all = get_decoder("recycled")(model, [prompt] * 2, sampling=greedy, max_new_tokens=24, stride=4,
                                           keep=1000, dense_layers=0).tokens
        always_full = get_decoder("recycled")(model, [prompt] * 2, sampling=greedy, max_new_tokens=24, stride=1,
                                              keep=1).tokens
        assert kept_all == base and always_full == base
    assert today.model.config._attn_implementation == "sdpa"  # the block switched it back
    with today.recycling(stride=4, top_k=2, dense_layers=0) as state:
        cache = today.new_cache()
        today.prefill([prompt], cache)
        for token in (5, 6, 7):
            today.forward(torch.tensor([[token]]), cache)
    assert (state.steps, state.full_steps) == (4, 1) and state.kept_fraction() < 0.5
    assert "recycled" in DECODERS and ponder.search.decoding.is_lossy("recycled")


def test_recycled_attention_refuses_what_it_cannot_do(arith):
    today, _ = arith
    prompt = today.encode(PROMPT)
    greedy = SamplingParams(temperature=0.0)
    with pytest.raises(ConfigError, match="keep"):
        get_decoder("recycled")(today, [prompt], sampling=greedy, max_new_tokens=4, keep=0)
    with pytest.raises(ConfigError, match="takes no draft"):
        get_decoder("recycled")(today, [prompt], sampling=greedy, max_new_tokens=4, draft=today)

    class Bare:
        name = "bare"

    with pytest.raises(ConfigError, match="needs a model that runs Recycled Attention"):
        get_decoder("recycled")(Bare(), [prompt], sampling=greedy, max_new_tokens=4)
    with pytest.raises(ConfigError, match="lossy"):
        ponder.generate(today, PROMPT, decoder="recycled", lossless=True, max_new_tokens=4)


def test_learned_verifiers_score_each_distinct_output_once_with_the_same_scores(arith, monkeypatch):
    today, _ = arith
    outputs = ["58+36=94\n", "7*2=14\n94-14=80\n", "58+36=94\n", "7*2=15\n", "7*2=14\n94-14=80\n"]
    for name in ("prm", "orm"):
        verifier = ponder.load_verifier("text", name, model=today)
        alone = torch.cat([verifier.score(PROMPT, [out]) for out in outputs])
        batches = []

        def counting(*args, batches=batches, original=verifier.model.forward, **kwargs):
            batches.append(kwargs["input_ids"].shape[0])
            return original(*args, **kwargs)

        monkeypatch.setattr(verifier.model, "forward", counting)
        together = verifier.score(PROMPT, outputs)
        monkeypatch.undo()
        torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
        assert batches == [3]  # three distinct outputs, one forward


def test_a_repeated_prompt_reuses_its_kept_prefill_and_samples_the_same(arith, monkeypatch):
    _, planned = arith
    planned.prompt_cache.clear()
    runs = []
    for _ in range(2):
        runs.append(ponder.generate(planned, PROMPT, strategy="best-of-n", n=8, verifier="prm", seed=4,
                                    max_new_tokens=24, temperature=1.0))
    assert planned.prompt_cache_hits >= 1 and tuple(planned.encode(PROMPT)) in planned.prompt_cache
    assert [c.output for c in runs[0].candidates] == [c.output for c in runs[1].candidates]
    # a hit runs no model forward for the prompt; a block that changes the forward never uses it
    calls = []
    original = planned.model.forward
    monkeypatch.setattr(planned.model, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    cache = planned.new_cache()
    planned.prefill([planned.encode(PROMPT)], cache)
    assert calls == [] and cache.length == len(planned.encode(PROMPT))
    with planned.capturing_hidden() as box:
        planned.prefill([planned.encode(PROMPT)], planned.new_cache())
    assert calls == [1] and box["hidden"].shape[1] == len(planned.encode(PROMPT))
    planned.prompt_cache_bytes = 0
    planned.prefill([planned.encode(PROMPT)], planned.new_cache())
    assert calls == [1, 1]
    planned.prompt_cache_bytes = 256 * 2**20


def test_fork_cache_must_be_a_bool(arith):
    with pytest.raises(ConfigError, match="fork_cache must be true or false, got 'yes'"):
        ponder.generate(arith[0], PROMPT, strategy="beam", n=4, beam_width=2, verifier="prm", fork_cache="yes",
                        max_new_tokens=4)
