"""Guides (ponder.search.guides): CAD's rule on a real model, every strategy on a guided model, and
lossless decoders stay lossless with respect to the guided distribution (chi-square on a toy)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from toys_decoding import ToyChain, chi_square_pvalue

import ponder
from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams, probs_from_logits
from ponder.search.core import candidate_generators
from ponder.search.decoding import get_decoder
from ponder.search.guides import cad, get_guide

SAMPLES = 6000
NEW = 4
CONTEXT, PROMPT = [2, 0], [0, 1]  # the toy sees position mod 3: the context shifts it


def _guided_exact(toy: ToyChain, alpha: float, sampling: SamplingParams) -> dict:
    """P(new tokens = s) under CAD's rule, by enumeration (the toy's logits are exact)."""
    out = {}
    for seq in itertools.product(range(toy.vocab), repeat=NEW):
        prob, done = 1.0, []
        for token in seq:
            z = (1 + alpha) * toy.next_logits(CONTEXT + PROMPT + done) - alpha * toy.next_logits(PROMPT + done)
            prob *= float(probs_from_logits(z[None], sampling)[0, token])
            done.append(token)
        out[seq] = prob
    return out


@pytest.mark.parametrize(("decoder", "options"), [("plain", {}), ("speculative", {"draft_len": 2}),
                                                  ("tree", {"branching": [2, 1]})])
def test_decoders_on_a_cad_guided_model_sample_the_guided_distribution(decoder, options):
    toy = ToyChain(seed=0)
    guided = cad(toy, context=CONTEXT, alpha=1.0)
    sampling = SamplingParams(temperature=1.0)
    ids = guided.encode(PROMPT)
    out = get_decoder(decoder)(guided, [ids] * SAMPLES, sampling=sampling, max_new_tokens=NEW,
                               generators=candidate_generators(0, range(SAMPLES)),
                               draft=None if decoder == "plain" else ToyChain(seed=1), **options)
    exact = _guided_exact(toy, 1.0, sampling)
    assert chi_square_pvalue(Counter(tuple(t) for t in out.tokens), exact, SAMPLES) > 1e-3
    # and the test can tell: the unguided model's own distribution (with the context) is rejected
    unguided = toy.exact_distribution(CONTEXT + PROMPT, NEW, sampling)
    assert chi_square_pvalue(Counter(tuple(t) for t in out.tokens), unguided, SAMPLES) < 1e-6


@pytest.fixture(scope="module")
def arith():
    return ponder.load("text", "zoo:arith")


def test_cad_logits_follow_the_rule_on_a_real_model_in_one_batched_forward(arith):
    context, prompt, alpha = "Q: 5+5\nA: 5+5=10\n", "Q: 1+2\n", 0.7
    guided = cad(arith, context=context, alpha=alpha)
    ids = guided.encode(prompt)
    assert ids == arith.encode(context + prompt)
    cache = guided.new_cache()
    logits = guided.prefill([ids, ids], cache)  # [2, V]
    with_c, without = arith.new_cache(), arith.new_cache()
    z_c = arith.prefill([arith.encode(context + prompt)], with_c)
    z = arith.prefill([arith.encode(prompt)], without)
    assert torch.allclose(logits[0], (1 + alpha) * z_c[0] - alpha * z[0], atol=1e-3)
    token = torch.tensor([[int(logits[0].argmax())]] * 2)
    step = guided.forward(token, cache)[:, -1]
    z_c, z = arith.forward(token[:1], with_c)[0, -1], arith.forward(token[:1], without)[0, -1]
    assert torch.allclose(step[1], (1 + alpha) * z_c - alpha * z, atol=1e-3)
    assert cache.inner.batch_size == 4  # two rows, two streams, one cache


def test_every_strategy_runs_on_a_guided_model_through_generate(arith):
    context = "Q: 12+7*3\nA: 7*3=21. 12+21=33. The answer is 33.\n"
    best = ponder.generate(arith, "Q: 12+7*3\n", strategy="best-of-n", n=3, verifier="exact", guide="cad",
                           context=context, guide_options={"alpha": 1.0}, max_new_tokens=40, temperature=0.7)
    assert best.config["guide"] == {"name": "cad", "alpha": 1.0, "context_chars": len(context)}
    beam = ponder.generate(arith, "Q: 12+7*3\n", strategy="beam", n=4, verifier="prm", guide="cad", context=context,
                           max_new_tokens=40, temperature=0.7, beam_width=2)
    assert beam.best is not None and beam.config["guide"]["name"] == "cad"
    greedy = ponder.generate(arith, "Q: 12+7*3\n", guide="cad", context=context, guide_options={"alpha": 0.0},
                             max_new_tokens=40, temperature=0.0)
    plain_with_context = ponder.generate(arith, context + "Q: 12+7*3\n", max_new_tokens=40, temperature=0.0)
    assert greedy.best.output == plain_with_context.best.output  # alpha 0 is plain decoding with the context


def test_bad_guides_are_one_clear_error(arith):
    with pytest.raises(ConfigError, match="unknown guide 'nope'; allowed: cad"):
        get_guide("nope")
    with pytest.raises(ConfigError, match="pass context=TEXT"):
        ponder.generate(arith, "Q: 1+2\n", guide="cad")
    with pytest.raises(ConfigError, match="alpha"):
        cad(arith, context="x", alpha=-1)
    with pytest.raises(ConfigError, match="guide 'cad' takes"):
        ponder.generate(arith, "Q: 1+2\n", guide="cad", context="x", guide_options={"beta": 1})


def _uscd_exact(toy: ToyChain, alpha: float, threshold: float, sampling: SamplingParams) -> dict:
    from ponder.search.guides.uscd import uncertainty

    out = {}
    for seq in itertools.product(range(toy.vocab), repeat=NEW):
        prob, done = 1.0, []
        for token in seq:
            z = toy.next_logits(CONTEXT + PROMPT + done)
            if float(uncertainty(z)) > threshold:
                z = (1 + alpha) * z - alpha * toy.next_logits(PROMPT[-1:] + done)
            prob *= float(probs_from_logits(z[None], sampling)[0, token])
            done.append(token)
        out[seq] = prob
    return out


def test_speculative_on_a_uscd_guided_model_samples_the_guided_distribution():
    from ponder.search.guides import uscd

    toy = ToyChain(seed=0)
    guided = uscd(toy, keep_lines=1, alpha=1.0, threshold=0.5)  # lame prompt: the prompt's last token
    ids = guided.encode(CONTEXT + PROMPT)
    sampling = SamplingParams(temperature=1.0)
    out = get_decoder("speculative")(guided, [ids] * SAMPLES, sampling=sampling, max_new_tokens=NEW,
                                     generators=candidate_generators(3, range(SAMPLES)), draft=ToyChain(seed=1),
                                     draft_len=2)
    counts = Counter(tuple(t) for t in out.tokens)
    assert chi_square_pvalue(counts, _uscd_exact(toy, 1.0, 0.5, sampling), SAMPLES) > 1e-3
    assert chi_square_pvalue(counts, toy.exact_distribution(CONTEXT + PROMPT, NEW, sampling), SAMPLES) < 1e-6


def test_uscd_contrasts_only_where_the_model_is_uncertain(arith):
    from ponder.search.guides import uscd
    from ponder.search.guides.uscd import lame_prompt, uncertainty

    prompt = "Q: 5+5\nA: 10\nQ: 12+7*3\n"
    assert lame_prompt(prompt, 1) == "Q: 12+7*3\n" and lame_prompt(prompt, 2) == "A: 10\nQ: 12+7*3\n"
    standard = arith.new_cache()
    z = arith.prefill([arith.encode(prompt)], standard)[0]
    z_lame = arith.prefill([arith.encode("Q: 12+7*3\n")], arith.new_cache())[0]
    u = float(uncertainty(z))
    for threshold, contrasted in ((max(0.0, u - 0.01), True), (min(1.0, u + 0.01), False)):
        guided = uscd(arith, alpha=0.5, threshold=threshold)
        ids = guided.encode(prompt)
        logits = guided.prefill([ids], guided.new_cache())[0]
        expected = 1.5 * z - 0.5 * z_lame if contrasted else z
        assert torch.allclose(logits, expected, atol=1e-3)
    with pytest.raises(ConfigError, match="not with a context"):
        ponder.generate(arith, prompt, guide="uscd", context="x")
    result = ponder.generate(arith, prompt, guide="uscd", guide_options={"threshold": 0.2}, max_new_tokens=16,
                             temperature=0.0)
    assert result.config["guide"]["name"] == "uscd" and result.best is not None


FACT = "Q: 12+7*3\n7*3=21\n12+21=33\nA: 99\n"  # a "fact" the model never learned: the datastore holds it


def test_knn_lm_interpolates_the_datastore_by_the_rule(arith, tmp_path):
    from ponder.search.guides import Datastore, knn

    store = Datastore.build(arith, [FACT, "Q: 3*4\n3*4=12\nA: 12\n"])
    assert len(store) == len(arith.encode(FACT)) + len(arith.encode("Q: 3*4\n3*4=12\nA: 12\n"))  # + EOS each
    guided = knn(arith, datastore=store, k=4, lam=0.3, temperature=2.0)
    ids = arith.encode("Q: 12+7*3\n7*3=")
    cache = arith.new_cache()
    with arith.capturing_hidden() as box:
        z = arith.prefill([ids], cache)[0]
    query = box["hidden"][0, -1]
    d = ((torch.from_numpy(store.keys) - query) ** 2).sum(-1)  # brute force, not scikit-learn
    near = d.topk(4, largest=False)
    p_knn = torch.zeros(z.shape[-1]).index_add_(0, torch.from_numpy(store.values)[near.indices],
                                                torch.softmax(-near.values / 2.0, -1))
    expected = torch.log(0.3 * p_knn + 0.7 * torch.softmax(z, -1))
    assert torch.allclose(guided.prefill([ids], guided.new_cache())[0], expected, atol=1e-4)
    # saved and loaded, the same datastore gives the same logits
    again = knn(arith, datastore=str(store.save(tmp_path / "facts")), k=4, lam=0.3, temperature=2.0)
    assert torch.allclose(again.prefill([ids], again.new_cache())[0], expected, atol=1e-4)


def test_a_document_added_to_the_datastore_is_recalled_without_retraining(arith):
    plain_answer = ponder.generate(arith, "Q: 12+7*3\n", max_new_tokens=40, temperature=0.0).best.output
    recalled = ponder.generate(arith, "Q: 12+7*3\n", max_new_tokens=40, temperature=0.0, guide="knn",
                               guide_options={"corpus": [FACT], "lam": 0.8})
    assert plain_answer.endswith("A: 33\n") and recalled.best.output.endswith("A: 99\n")
    assert recalled.config["guide"] == {"name": "knn", "corpus": "1 items", "lam": 0.8, "context_chars": None}
    # lossless decoders stay exact on the guided model: greedy speculative decoding gives its tokens
    draft = ponder.load("text", "zoo:arith-draft")
    fast = ponder.generate(arith, "Q: 12+7*3\n", max_new_tokens=40, temperature=0.0, guide="knn",
                           guide_options={"corpus": [FACT], "lam": 0.8}, decoder="speculative", draft=draft)
    assert fast.best.output == recalled.best.output
    off = ponder.generate(arith, "Q: 12+7*3\n", max_new_tokens=40, temperature=0.0, guide="knn",
                          guide_options={"corpus": [FACT], "lam": 0.0})
    assert off.best.output == plain_answer


def test_knn_and_corpus_input_errors(arith, tmp_path):
    from ponder.errors import InputError
    from ponder.search.guides import Datastore, knn
    from ponder.search.retrieval import read_corpus

    with pytest.raises(ConfigError, match="exactly one of datastore"):
        knn(arith)
    with pytest.raises(ConfigError, match="hidden states"):
        knn(ToyChain(seed=0), corpus=["x"])
    with pytest.raises(ConfigError, match="lam must be"):
        knn(arith, corpus=["Q: 1\n"], lam=2)
    (tmp_path / "docs" / "more").mkdir(parents=True)
    (tmp_path / "docs" / "a.txt").write_text("first")
    (tmp_path / "docs" / "more" / "b.md").write_text("second")
    (tmp_path / "docs" / "skip.bin").write_bytes(b"\x00")
    assert [(d.id, d.text) for d in read_corpus(tmp_path / "docs")] == [("a.txt", "first"), ("more/b.md", "second")]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"id": 1, "text": "one"}\n\n{"id": "2", "text": "two"}\n')
    assert [d.id for d in read_corpus(jsonl)] == ["1", "2"]
    jsonl.write_text('{"id": 1, "text": "one"}\n{"text": 5}\n')
    with pytest.raises(InputError, match="line 2"):
        read_corpus(jsonl)
    jsonl.write_text('{"id": 1, "text": "one"}\n{"id": 1, "text": "two"}\n')
    with pytest.raises(InputError, match="same id: 1"):
        read_corpus(jsonl)
    with pytest.raises(InputError, match="does not exist"):
        read_corpus(tmp_path / "nowhere")
    (tmp_path / "bad.npz").write_bytes(b"not a datastore")
    with pytest.raises(InputError, match="not a ponder kNN-LM datastore"):
        Datastore.load(tmp_path / "bad.npz")
