"""Layer-skip self-speculative decoding (SWIFT): lossless in distribution, greedy equals plain greedy
on real 4-layer models (Llama, Qwen2, GPT-2), the skipped-layer draft leaves the shared cache as it
found it, batch rows equal single rows with a fixed skip set, and the on-the-fly search moves the
skip set toward layers whose removal the target agrees with."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import pytest
import torch
from toys_decoding import ToyChain, chi_square_pvalue

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import candidate_generators
from ponder.search.decoding import get_decoder, plain
from ponder.search.decoding.layer_skip import layer_skip

SAMPLES = 4000
NEW = 3  # 27 outcomes


class ToyLayered(ToyChain):
    """ToyChain whose logits add one bias table per 'layer'; skipping a layer drops its table.

    The draft writes its tokens into the shared (toy) cache, so a draft token left visible after
    rollback would change the verify step's context and the distribution."""

    num_layers = 5

    def __init__(self, seed: int = 0, layer_scale=(0.0, 1.0, 0.05, 1.0, 0.0), **kw):
        super().__init__(seed=seed, **kw)
        gen = torch.Generator().manual_seed(seed + 100)
        self.layer_bias = torch.randn((self.num_layers, self.vocab + 1, self.vocab), generator=gen)  # [N, V+1, V]
        self.layer_bias *= torch.tensor(layer_scale)[:, None, None]
        self.skipped: set[int] = set()

    @contextmanager
    def skipping_layers(self, skip):
        self.skipped = set(skip)
        try:
            yield
        finally:
            self.skipped = set()

    def next_logits(self, context):
        prev1 = context[-1] if context else self.vocab
        kept = [i for i in range(self.num_layers) if i not in self.skipped]
        return super().next_logits(context) + self.layer_bias[kept, prev1].sum(0)  # [V]


def test_layer_skip_matches_target_distribution():
    target = ToyLayered()
    prompt = [0, 1]
    stats: dict = {}
    out = layer_skip(target, [prompt] * SAMPLES, sampling=SamplingParams(), max_new_tokens=NEW, draft_len=3,
                     min_confidence=None, generators=candidate_generators(0, range(SAMPLES)), stats=stats)
    assert stats["accepted"] > SAMPLES // 2  # drafts really were accepted
    counts = Counter(tuple(t) for t in out.tokens)
    assert chi_square_pvalue(counts, target.exact_distribution(prompt, NEW, SamplingParams()), SAMPLES) > 1e-3


def test_search_settles_on_the_layer_the_target_barely_uses():
    # layers 1 and 3 carry strong biases, layer 2 almost none: skipping only 2 drafts like the target
    target = ToyLayered(layer_scale=(0.0, 3.0, 0.01, 3.0, 0.0))
    stats: dict = {}
    layer_skip(target, [[0, 1]] * 8, sampling=SamplingParams(temperature=0.0), max_new_tokens=60, draft_len=4,
               skip_ratio=0.34, search_steps=12, min_confidence=None, stats=stats)
    assert stats["skip"] == [2]


def test_toy_batch_rows_equal_single_rows_with_a_fixed_skip_set():
    target = ToyLayered()
    prompts = [[0, 1, 2, 0, 1], [2, 2], [1, 0, 1, 0, 1, 0]]
    kw = dict(sampling=SamplingParams(), max_new_tokens=12, skip=[1, 3], draft_len=3)
    batch = layer_skip(target, prompts, generators=candidate_generators(3, range(3)), **kw)
    for row, prompt in enumerate(prompts):
        alone = layer_skip(target, [prompt], generators=candidate_generators(3, [row]), **kw)
        assert alone.tokens[0] == batch.tokens[row]
        assert alone.logprobs[0] == pytest.approx(batch.logprobs[row])


# ---- real (tiny random) transformers models with 4 layers -----------------------------------------


def _four_layer(arch: str, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(0)
    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.4)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common, **ids))
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common, **ids))
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=4, n_head=4, n_positions=64,
                                      initializer_range=0.4, **ids))


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def deep(request, tmp_path_factory, char_tokenizer):
    import ponder

    folder = tmp_path_factory.mktemp(f"deep_{request.param}")
    _four_layer(request.param, char_tokenizer).save_pretrained(folder)
    char_tokenizer.save_pretrained(folder)
    return ponder.load("text", str(folder))


PROMPTS = ["Q: 1+2*3\n", "Q: 12-7+40*2-9\n", "R: 5*5\n"]


def test_greedy_equals_plain_greedy(deep):
    ids = [deep.encode(p) for p in PROMPTS]  # different lengths: a left-padded batch
    greedy = SamplingParams(temperature=0.0)
    ref = plain(deep, ids, sampling=greedy, max_new_tokens=24)
    for kw in (dict(), dict(skip=[2], draft_len=2, min_confidence=None), dict(search_steps=0, draft_len=5)):
        stats: dict = {}
        out = layer_skip(deep, ids, sampling=greedy, max_new_tokens=24, stats=stats, **kw)
        assert out.tokens == ref.tokens and out.stop_reasons == ref.stop_reasons
        assert out.compute.draft_calls > 0


def test_skipped_layer_draft_leaves_the_cache_as_it_found_it(deep):
    prompt = deep.encode("Q: 3+4\n")
    cache = deep.new_cache()
    deep.prefill([prompt], cache)
    before = [deep_copy.clone() for deep_copy in (cache.store.keys(i) for i in range(deep.num_layers))]
    start = cache.length
    with deep.skipping_layers([1, 2]):
        deep.forward(torch.tensor([[5, 6, 7]]), cache)
    assert cache.store.layer_length(0) == start + 3 and cache.store.layer_length(1) == start  # skipped: unwritten
    cache.truncate(start)
    assert [cache.store.layer_length(i) for i in range(deep.num_layers)] == [start] * deep.num_layers
    for layer in range(deep.num_layers):
        assert torch.equal(cache.store.keys(layer), before[layer])
    fresh = deep.new_cache()
    deep.prefill([prompt], fresh)
    assert torch.equal(deep.forward(torch.tensor([[9]]), cache), deep.forward(torch.tensor([[9]]), fresh))
    assert len(deep._layer_list()[2]) == deep.num_layers  # every layer is back after the block


def test_sampled_batch_rows_equal_single_rows(deep):
    ids = [deep.encode(p) for p in PROMPTS]
    kw = dict(sampling=SamplingParams(temperature=1.0), max_new_tokens=16, skip=[1, 2], draft_len=3)
    batch = layer_skip(deep, ids, generators=candidate_generators(7, range(3)), **kw)
    for row in range(3):
        alone = layer_skip(deep, ids[row:row + 1], generators=candidate_generators(7, [row]), **kw)
        assert alone.tokens[0] == batch.tokens[row]


def test_bad_input_errors(deep):
    ids = [deep.encode("Q: 1+1\n")]
    kw = dict(sampling=SamplingParams(), max_new_tokens=4)
    with pytest.raises(ConfigError, match="takes no draft model"):
        layer_skip(deep, ids, draft=deep, **kw)
    with pytest.raises(ConfigError, match="skip must be"):
        layer_skip(deep, ids, skip=[0], **kw)  # the first layer always runs
    with pytest.raises(ConfigError, match="skip_ratio"):
        layer_skip(deep, ids, skip_ratio=1.0, **kw)
    with pytest.raises(ConfigError, match="at least 3 decoder layers"):
        layer_skip(ToyChain(), [[0, 1]], **kw)
    assert get_decoder("layer-skip") is layer_skip
