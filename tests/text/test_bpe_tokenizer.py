"""A GPT-2-style byte-level BPE tokenizer with no pad token and multi-byte characters: the adapter
pads with EOS itself, matches HF greedy, and streams whole characters."""

import pytest
import torch

import ponder
from ponder.kernels.sampling import SamplingParams
from ponder.search.decoding import plain

CORPUS = ["héllo wörld, the cafe naïve façade", "über straße 12+7=19", "日本語 テキスト 🙂 emoji"] * 20


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    assert hf_tok.pad_token is None
    torch.manual_seed(0)
    eos = hf_tok.eos_token_id
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(hf_tok), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                       bos_token_id=eos, eos_token_id=eos, initializer_range=0.4))
    folder = tmp_path_factory.mktemp("bpe")
    model.save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    return folder


def test_no_pad_token_left_pads_with_eos_and_matches_hf_greedy(bpe_folder):
    lm = ponder.load("text", bpe_folder)
    assert lm.pad_token_id in lm.eos_token_ids
    prompts = ["héllo wörld", "日本語", "über straße 12+7"]
    ours = plain(lm, [lm.encode(p) for p in prompts], sampling=SamplingParams(temperature=0.0), max_new_tokens=8)
    lm.tokenizer.pad_token = lm.tokenizer.eos_token
    lm.tokenizer.padding_side = "left"
    enc = lm.tokenizer(prompts, return_tensors="pt", padding=True)
    hf = lm.model.generate(**enc, do_sample=False, max_new_tokens=8, pad_token_id=lm.pad_token_id)
    for row, new in enumerate(hf[:, enc["input_ids"].shape[1]:].tolist()):
        expected = new[: new.index(lm.pad_token_id)] if lm.pad_token_id in new else new
        assert ours.tokens[row] == expected


def test_streaming_never_splits_a_multibyte_character(bpe_folder):
    lm = ponder.load("text", bpe_folder)
    pieces: dict[int, list[str]] = {}
    res = ponder.generate(lm, "日本", n=3, seed=2, max_new_tokens=12,
                          stream=lambda i, text: pieces.setdefault(i, []).append(text))
    for cand in res.candidates:
        got = pieces.get(cand.meta["index"], [])
        assert "".join(got) == cand.output
        # only the last piece may end in an incomplete character (a row cut off mid-character)
        assert not any(p.endswith("\ufffd") for p in got[:-1])
