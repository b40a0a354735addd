"""The text modality adapter: `TextModel` over tiny random Llama / Qwen2 / GPT-2 checkpoints.

Pins loading, greedy equality with `model.generate` under left padding, seeded sampling that does not
depend on the batch, the `TextCache` bridge (rollback, reorder, tree masks), EOS / stop strings /
streaming / compute accounting of the plain decoder, and the user errors of `ponder.load` and
`ponder.generate`. Every model is hidden 32, 2 layers, 100 tokens, 64 positions (see conftest).
"""

from __future__ import annotations

import pytest
import torch

import ponder
from ponder.errors import ConfigError, InputError, ModelLoadError
from ponder.kernels import SamplingParams
from ponder.modalities.text import TextModel
from ponder.search.core import candidate_generators
from ponder.search.decoding import plain

ARCHS = ["llama", "qwen2", "gpt2"]
GREEDY = SamplingParams(temperature=0.0)
PROMPTS = ["Q: 12+7*3\n", "R: 5-4\n", "Q: 1"]  # three lengths: the batch is left-padded


@pytest.fixture(scope="module", autouse=True)
def _one_cpu_thread():
    """A background job shares the CPU; one intra-op thread keeps tiny forwards from spinning."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loaded(tiny_model_folders):
    """arch -> a `TextModel` loaded once per module (tests that mutate a model load their own)."""
    cache: dict[str, TextModel] = {}

    def get(arch: str) -> TextModel:
        if arch not in cache:
            cache[arch] = ponder.load("text", tiny_model_folders[arch])
        return cache[arch]

    return get


def greedy_tokens(lm, prompt: str, max_new_tokens: int = 10) -> list[int]:
    return plain(lm, [lm.encode(prompt)], sampling=GREEDY, max_new_tokens=max_new_tokens).tokens[0]


def hf_greedy(lm, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """`model.generate` greedy new tokens per row, cut before the first EOS."""
    assert lm.tokenizer.padding_side == "left"
    batch = lm.tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = lm.model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                                pad_token_id=lm.pad_token_id, eos_token_id=sorted(lm.eos_token_ids))
    rows = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        cut = [i for i, t in enumerate(row) if t in lm.eos_token_ids]
        rows.append(row[: cut[0]] if cut else row)
    return rows


# ---- loading ------------------------------------------------------------------------------------


def test_load_returns_a_text_model_with_eos_and_context(tiny_folder):
    lm = ponder.load("text", tiny_folder)
    assert isinstance(lm, TextModel)
    assert lm.modality == "text"
    assert 2 in lm.eos_token_ids
    assert lm.context_length == 64
    assert lm.pad_token_id == 0
    assert lm.num_layers == 2
    assert lm.dtype == torch.float32


def test_encode_prepends_bos_and_decode_drops_special_tokens(loaded):
    lm = loaded("llama")
    ids = lm.encode("1+2")
    assert ids[0] == 1 and len(ids) == 4
    assert lm.decode(ids[1:]) == "1+2"
    assert lm.decode([1] + ids[1:] + [2, 0]) == "1+2"
    with pytest.raises(InputError, match="non-empty"):
        lm.encode("")


# ---- greedy equality with transformers ---------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_plain_matches_hf_generate_on_a_left_padded_batch(loaded, arch):
    lm = loaded(arch)
    ids = [lm.encode(p) for p in PROMPTS]
    assert len({len(i) for i in ids}) == 3  # really three lengths: padding is exercised
    out = plain(lm, ids, sampling=GREEDY, max_new_tokens=10)
    expected = hf_greedy(lm, PROMPTS, 10)
    assert out.tokens == expected
    for row, tokens in enumerate(expected):
        assert out.stop_reasons[row] == ("length" if len(tokens) == 10 else "eos")
        assert len(out.logprobs[row]) == len(tokens)
        assert all(lp <= 0.0 for lp in out.logprobs[row])


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_plain_matches_hf_generate_for_a_single_prompt(loaded, arch):
    lm = loaded(arch)
    out = plain(lm, [lm.encode(PROMPTS[0])], sampling=GREEDY, max_new_tokens=10)
    assert out.tokens == hf_greedy(lm, PROMPTS[:1], 10)


def test_greedy_batch_rows_equal_the_same_prompts_decoded_alone(loaded):
    lm = loaded("llama")
    batch = plain(lm, [lm.encode(p) for p in PROMPTS], sampling=GREEDY, max_new_tokens=8)
    assert batch.tokens == [greedy_tokens(lm, p, 8) for p in PROMPTS]


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generate_gives_identical_candidates_equal_to_plain(loaded, arch):
    lm = loaded(arch)
    res = ponder.generate(lm, PROMPTS[0], temperature=0, n=2, max_new_tokens=8)
    first, second = res.candidates
    assert first.meta["token_ids"] == second.meta["token_ids"] == greedy_tokens(lm, PROMPTS[0], 8)
    assert first.output == second.output == lm.decode(first.meta["token_ids"])
    assert res.best is first
    assert res.config["sampling"]["temperature"] == 0
    assert res.config["modality"] == "text"


# ---- seeded sampling ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_seeded_sampling_is_reproducible(loaded, arch):
    lm = loaded(arch)
    runs = [ponder.generate(lm, PROMPTS[1], n=3, seed=11, temperature=1.0, max_new_tokens=10)
            for _ in range(2)]
    assert [c.meta["token_ids"] for c in runs[0].candidates] == [c.meta["token_ids"] for c in runs[1].candidates]
    assert [c.seed for c in runs[0].candidates] == [c.seed for c in runs[1].candidates]


@pytest.mark.parametrize("arch", ARCHS)
def test_sampled_candidate_does_not_depend_on_the_batch(loaded, arch):
    lm = loaded(arch)
    res = ponder.generate(lm, PROMPTS[0], n=4, seed=5, temperature=1.0, max_new_tokens=10)
    ids = lm.encode(PROMPTS[0])
    for index in (0, 2):
        alone = plain(lm, [ids], sampling=SamplingParams(temperature=1.0), max_new_tokens=10,
                      generators=candidate_generators(5, [index]))
        assert alone.tokens[0] == res.candidates[index].meta["token_ids"]
        assert alone.stop_reasons[0] == res.candidates[index].meta["stop_reason"]
    # the same rows, in a batch of two prompts of different lengths (padding changes nothing)
    mixed = plain(lm, [lm.encode(PROMPTS[2]), ids], sampling=SamplingParams(temperature=1.0),
                  max_new_tokens=10, generators=candidate_generators(5, [0, 2]))
    assert mixed.tokens[1] == res.candidates[2].meta["token_ids"]


@pytest.mark.parametrize("arch", ARCHS)
def test_different_seeds_give_different_samples(loaded, arch):
    lm = loaded(arch)
    a = ponder.generate(lm, PROMPTS[0], n=2, seed=1, temperature=1.0, max_new_tokens=10)
    b = ponder.generate(lm, PROMPTS[0], n=2, seed=2, temperature=1.0, max_new_tokens=10)
    assert [c.meta["token_ids"] for c in a.candidates] != [c.meta["token_ids"] for c in b.candidates]
    assert a.candidates[0].meta["token_ids"] != a.candidates[1].meta["token_ids"]


# ---- the cache bridge: rollback, reorder, tree masks --------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS[1:]], ids=["single", "padded_pair"])
def test_truncated_cache_continues_like_a_fresh_one(loaded, arch, prompts):
    lm = loaded(arch)
    ids = [lm.encode(p) for p in prompts]
    batch = len(ids)
    a = torch.tensor([[40, 41, 42]] * batch)  # [B, 3]
    b = torch.tensor([[17, 60, 5], [33, 8, 71]][:batch])  # [B, 3]

    cache = lm.new_cache()
    lm.prefill(ids, cache)
    length = cache.length
    mask = cache.attention_mask  # [B, L]; None while no row is padded
    assert (mask is None) == (batch == 1)
    mask = None if mask is None else mask.clone()
    lm.forward(a, cache)
    assert cache.length == length + 3
    cache.truncate(length)
    assert cache.length == length
    assert (cache.attention_mask is None and mask is None) or torch.equal(cache.attention_mask, mask)
    rolled = lm.forward(b, cache)  # [B, 3, V]

    fresh_cache = lm.new_cache()
    lm.prefill(ids, fresh_cache)
    fresh = lm.forward(b, fresh_cache)  # [B, 3, V]
    assert rolled.shape == (batch, 3, 100)
    torch.testing.assert_close(rolled, fresh, atol=1e-5, rtol=0)
    assert cache.length == fresh_cache.length


@pytest.mark.parametrize("arch", ARCHS)
def test_reordered_cache_equals_prefilling_the_reordered_prompts(loaded, arch):
    lm = loaded(arch)
    p0, p1 = lm.encode(PROMPTS[0]), lm.encode(PROMPTS[1])
    step = torch.tensor([[5], [6], [7]])  # [3, 1]

    cache = lm.new_cache()
    first = lm.prefill([p0, p1], cache)  # [2, V]
    cache.reorder(torch.tensor([1, 1, 0]))
    reordered = lm.forward(step, cache)  # [3, 1, V]

    fresh_cache = lm.new_cache()
    fresh_first = lm.prefill([p1, p1, p0], fresh_cache)  # [3, V]
    fresh = lm.forward(step, fresh_cache)  # [3, 1, V]
    torch.testing.assert_close(first[[1, 1, 0]], fresh_first, atol=1e-5, rtol=0)
    torch.testing.assert_close(reordered, fresh, atol=1e-5, rtol=0)
    assert cache.length == fresh_cache.length


@pytest.mark.parametrize("arch", ARCHS)
def test_causal_tree_mask_equals_no_mask(loaded, arch):
    lm = loaded(arch)
    ids = [lm.encode(p) for p in PROMPTS[:2]]
    tokens = torch.tensor([[40, 41, 42, 43], [9, 8, 7, 6]])  # [2, 4]
    causal = torch.tril(torch.ones(4, 4, dtype=torch.bool)).expand(2, 4, 4)  # [2, 4, 4]

    with_mask, without = lm.new_cache(), lm.new_cache()
    lm.prefill(ids, with_mask)
    lm.prefill(ids, without)
    tree = lm.forward(tokens, with_mask, attn_mask=causal)
    plain_logits = lm.forward(tokens, without)
    torch.testing.assert_close(tree, plain_logits, atol=1e-5, rtol=0)
    # and decoding goes on identically from both caches
    nxt = torch.tensor([[3], [4]])
    torch.testing.assert_close(lm.forward(nxt, with_mask), lm.forward(nxt, without), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_tree_branch_sees_only_its_ancestors(loaded, arch):
    """Tree a -> {b, c}: c (index 2) scores as if the sequence were just a, c."""
    lm = loaded(arch)
    ids = [lm.encode(PROMPTS[0])]
    tree = torch.tensor([[[1, 0, 0], [1, 1, 0], [1, 0, 1]]], dtype=torch.bool)  # [1, 3, 3]

    cache = lm.new_cache()
    lm.prefill(ids, cache)
    branched = lm.forward(torch.tensor([[40, 41, 42]]), cache, attn_mask=tree)  # [1, 3, V]
    linear_cache = lm.new_cache()
    lm.prefill(ids, linear_cache)
    linear = lm.forward(torch.tensor([[40, 42]]), linear_cache)  # [1, 2, V]
    torch.testing.assert_close(branched[:, 2], linear[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(branched[:, 0], linear[:, 0], atol=1e-5, rtol=0)


def test_prefill_needs_an_empty_cache(loaded):
    lm = loaded("llama")
    cache = lm.new_cache()
    lm.prefill([lm.encode("1")], cache)
    with pytest.raises(ValueError, match="empty cache"):
        lm.prefill([lm.encode("1")], cache)


def test_cache_crop_follows_the_installed_transformers_remove_n_semantics(loaded):
    lm = loaded("llama")
    cache = lm.new_cache()
    lm.prefill([lm.encode(PROMPTS[0])], cache)
    length = cache.length
    cache.crop(-2)  # remove two positions: agreed by every transformers version
    assert cache.length == length - 2
    cache.crop(0)  # transformers 5: "remove 0 tokens" — what generate's own loops call each step
    assert cache.length == length - 2
    with pytest.raises(ValueError, match="negative"):
        cache.crop(3)


# ---- the plain decoder: EOS, stop strings, streaming, compute -----------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_row_stops_at_eos_and_excludes_it(tiny_model_folders, loaded, arch):
    ref = loaded(arch)
    prompts = [PROMPTS[0], PROMPTS[1]]
    reference = [greedy_tokens(ref, p, 10) for p in prompts]
    t = reference[0][2]  # the token greedy emits at step 3 of row 0 becomes "EOS"

    lm = ponder.load("text", tiny_model_folders[arch])
    lm.eos_token_ids = frozenset({t})
    out = plain(lm, [lm.encode(p) for p in prompts], sampling=GREEDY, max_new_tokens=10)
    for row, tokens in enumerate(reference):
        if t in tokens:
            assert out.stop_reasons[row] == "eos"
            assert out.tokens[row] == tokens[: tokens.index(t)]
        else:
            assert out.stop_reasons[row] == "length"
            assert out.tokens[row] == tokens
        assert len(out.logprobs[row]) == len(out.tokens[row])
    assert out.tokens[0] == reference[0][: reference[0].index(t)]
    if arch == "llama":  # its first three greedy tokens are distinct: exactly two come out
        assert out.tokens[0] == reference[0][:2]


@pytest.mark.parametrize("arch", ARCHS)
def test_stop_string_cuts_the_output_and_reports_stop(loaded, arch):
    lm = loaded(arch)
    greedy = greedy_tokens(lm, PROMPTS[0], 10)
    stop = lm.decode(greedy[1:3])
    assert stop, "greedy tokens 2..3 decode to text"
    full = lm.decode(greedy)
    expected = full[: full.find(stop) + len(stop)]

    res = ponder.generate(lm, PROMPTS[0], temperature=0, stop=[stop], max_new_tokens=10)
    cand = res.best
    assert cand.output.endswith(stop)
    assert cand.output == expected
    assert cand.meta["stop_reason"] == "stop"
    ids = cand.meta["token_ids"]
    assert ids == greedy[: len(ids)] and len(ids) <= 3
    assert stop in lm.decode(ids) and stop not in lm.decode(ids[:-1])
    assert res.config["stop"] == [stop]


def test_stop_string_is_found_across_tokens_that_decode_to_nothing(loaded):
    from ponder.api import text_stop

    lm = loaded("llama")
    a, b = lm.encode("ab")[1:]
    check = text_stop(lm, ["ab"])
    tokens = [a] + [0] * 6 + [b]
    assert lm.decode(tokens) == "ab"
    assert check(0, tokens)


@pytest.mark.parametrize("arch", ARCHS)
def test_streamed_deltas_concatenate_to_each_candidate_output(loaded, arch):
    lm = loaded(arch)
    deltas: dict[int, list[str]] = {}
    res = ponder.generate(lm, PROMPTS[0], n=2, seed=3, temperature=1.0, max_new_tokens=10,
                          stream=lambda i, text: deltas.setdefault(i, []).append(text))
    assert set(deltas) <= {0, 1}
    for i, cand in enumerate(res.candidates):
        assert "".join(deltas.get(i, [])) == cand.output
        assert all(deltas.get(i, []))  # no empty deltas
    assert res.candidates[0].output != res.candidates[1].output


@pytest.mark.parametrize("arch", ARCHS)
def test_plain_stream_callback_sees_every_kept_token_in_order(loaded, arch):
    lm = loaded(arch)
    seen: dict[int, list[int]] = {0: [], 1: []}
    out = plain(lm, [lm.encode(p) for p in PROMPTS[:2]], sampling=GREEDY, max_new_tokens=6,
                stream=lambda row, tok: seen[row].append(tok))
    assert [seen[0], seen[1]] == out.tokens


@pytest.mark.parametrize("arch", ARCHS)
def test_compute_counts_one_model_call_per_forward_and_every_token(loaded, arch, monkeypatch):
    lm = loaded(arch)
    calls = []
    prefill, forward = lm.prefill, lm.forward
    monkeypatch.setattr(lm, "prefill", lambda *a, **k: calls.append("prefill") or prefill(*a, **k))
    monkeypatch.setattr(lm, "forward", lambda *a, **k: calls.append("forward") or forward(*a, **k))
    ids = [lm.encode(p) for p in PROMPTS[:2]]
    out = plain(lm, ids, sampling=GREEDY, max_new_tokens=5)
    assert out.stop_reasons == ["length", "length"]
    assert calls == ["prefill"] + ["forward"] * 4
    assert out.compute.model_calls == len(calls) == 5
    assert out.compute.tokens == 10 == sum(len(t) for t in out.tokens)
    assert out.compute.draft_calls == 0
    assert out.compute.seconds > 0

    calls.clear()
    res = ponder.generate(lm, PROMPTS[0], n=3, temperature=0, max_new_tokens=5)
    assert res.compute.model_calls == len(calls) == 5
    assert res.compute.tokens == 15
    assert res.to_dict()["compute"]["model_calls"] == 5


def test_plain_with_no_new_tokens_runs_no_model(loaded):
    lm = loaded("llama")
    out = plain(lm, [lm.encode("1")], sampling=GREEDY, max_new_tokens=0)
    assert out.tokens == [[]] and out.stop_reasons == ["length"]
    assert out.compute.model_calls == 0


# ---- errors -------------------------------------------------------------------------------------


def test_loading_a_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelLoadError, match="no_such_model"):
        ponder.load("text", missing)


def test_loading_a_folder_without_config_fails(tmp_path, char_tokenizer):
    char_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="config.json"):
        ponder.load("text", tmp_path)


def test_loading_pytorch_bin_weights_asks_for_safetensors(tiny_bin_only_folder):
    assert (tiny_bin_only_folder / "pytorch_model.bin").is_file()
    with pytest.raises(ModelLoadError, match="safetensors") as err:
        ponder.load("text", tiny_bin_only_folder)
    assert str(tiny_bin_only_folder) in str(err.value)


def test_loading_with_an_unknown_dtype_lists_the_allowed_ones(tiny_model_folders):
    with pytest.raises(ModelLoadError, match="bfloat16"):
        ponder.load("text", tiny_model_folders["llama"], dtype="float64")


def test_unknown_modality_is_a_config_error(tiny_model_folders):
    with pytest.raises(ConfigError, match=r"unknown modality .smell.; registered: text, image"):
        ponder.load("smell", tiny_model_folders["llama"])


def test_text_model_loaded_as_image_names_what_an_image_folder_holds(tiny_model_folders):
    from ponder.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="model_index.json"):
        ponder.load("image", tiny_model_folders["llama"])


@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_too_long_for_the_context_names_the_numbers(loaded, arch):
    lm = loaded(arch)
    prompt = "1" * 60
    length = len(lm.encode(prompt))
    assert 54 < length <= 64
    with pytest.raises(InputError) as err:
        ponder.generate(lm, prompt, max_new_tokens=10)
    message = str(err.value)
    assert f"{length} tokens" in message
    assert "max_new_tokens=10" in message
    assert "64" in message
    assert f"at most {64 - length}" in message


def test_check_length_allows_exactly_the_context(loaded):
    lm = loaded("llama")
    lm.check_length(54, 10)
    with pytest.raises(InputError, match="at most 10"):
        lm.check_length(54, 11)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"n": 0}, "n must be a positive integer"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"strategy": "beam_me_up"}, "unknown strategy .beam_me_up.; allowed: .*particles.*sample"),
        ({"decoder": "warp"}, "unknown decoder .warp.; allowed: .*plain.*speculative"),
    ],
    ids=["n0", "temperature", "top_p", "top_k", "min_p", "max_new_tokens", "strategy", "decoder"],
)
def test_bad_generate_options_are_config_errors(loaded, options, match):
    lm = loaded("llama")
    with pytest.raises(ConfigError, match=match):
        ponder.generate(lm, "x", max_new_tokens=options.pop("max_new_tokens", 4), **options)


def test_empty_prompt_is_an_input_error(loaded):
    with pytest.raises(InputError, match="non-empty"):
        ponder.generate(loaded("llama"), "", max_new_tokens=4)


def test_generate_rejects_an_object_that_is_not_a_loaded_model():
    with pytest.raises(ConfigError, match="ponder.load"):
        ponder.generate(object(), "x")
