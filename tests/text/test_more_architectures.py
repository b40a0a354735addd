"""Greedy equality with HF generate beyond the three core architectures: sliding-window attention
(Mistral, Gemma 2 with prompts longer than the window), learned positions with an offset (OPT), and
parallel attention (GPT-NeoX) — all through ponder's own KV cache and left padding."""

import pytest
import torch
import transformers as T

import ponder
from ponder.kernels.sampling import SamplingParams
from ponder.search.decoding import plain

IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
COMMON = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 64, "initializer_range": 0.4}
BUILDERS = {
    "mistral": lambda v: T.MistralForCausalLM(T.MistralConfig(vocab_size=v, sliding_window=4, **COMMON, **IDS)),
    "gemma2": lambda v: T.Gemma2ForCausalLM(T.Gemma2Config(vocab_size=v, head_dim=8, sliding_window=4, **COMMON,
                                                           **IDS)),
    "opt": lambda v: T.OPTForCausalLM(T.OPTConfig(vocab_size=v, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                                  num_attention_heads=4, max_position_embeddings=64,
                                                  word_embed_proj_dim=32, init_std=0.4, **IDS)),
    "gpt_neox": lambda v: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(vocab_size=v, hidden_size=32, intermediate_size=64,
                                                               num_hidden_layers=2, num_attention_heads=4,
                                                               max_position_embeddings=64, initializer_range=0.4,
                                                               **IDS)),
}
PROMPTS = ["Q: 1+2\n", "Q: 12+34*5-6\n", "R: 9\n"]


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_greedy_equals_hf_generate_with_left_padding(tmp_path, char_tokenizer, arch):
    torch.manual_seed(0)
    BUILDERS[arch](len(char_tokenizer)).save_pretrained(tmp_path)
    char_tokenizer.save_pretrained(tmp_path)
    lm = ponder.load("text", tmp_path)
    ours = plain(lm, [lm.encode(p) for p in PROMPTS], sampling=SamplingParams(temperature=0.0), max_new_tokens=12)
    enc = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    hf = lm.model.generate(**enc, do_sample=False, max_new_tokens=12, pad_token_id=0, eos_token_id=2)
    for row, new in enumerate(hf[:, enc["input_ids"].shape[1]:].tolist()):
        assert ours.tokens[row] == (new[: new.index(2)] if 2 in new else new)
