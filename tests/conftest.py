"""Shared fixtures: tiny random causal LMs (Llama, Qwen2, GPT-2) saved with the arith char tokenizer.

Each model has hidden size 32, 2 layers, a ~100-token vocabulary and 64 positions, so a whole test
file of them runs in seconds on a couple of CPU cores. Folders are written once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_ARCHS = ("llama", "qwen2", "gpt2")


def pytest_configure(config):
    # Tiny models gain nothing from a second intra-op thread, and on a shared 2-core machine two
    # threads per forward stall each other whenever anything else holds a core (5-10x slower).
    import torch

    torch.set_num_threads(1)

TINY_CONTEXT = 64
INIT = 0.4  # wider than the default 0.02: varied greedy paths with clear argmax margins


def _tiny_model(arch: str, tokenizer):
    """A randomly initialised tiny causal LM of `arch`, seeded, sized for `tokenizer`."""
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(0)
    if arch == "llama":
        # 2 KV heads under 4 query heads: grouped-query attention
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=TINY_CONTEXT, initializer_range=INIT, **ids)
        return LlamaForCausalLM(config)
    if arch == "qwen2":
        config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=TINY_CONTEXT, initializer_range=INIT, **ids)
        return Qwen2ForCausalLM(config)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4,
                            n_positions=TINY_CONTEXT, initializer_range=INIT, **ids)
        return GPT2LMHeadModel(config)
    raise ValueError(f"unknown tiny arch {arch!r}; use one of {TINY_ARCHS}")


@pytest.fixture(scope="session")
def char_tokenizer():
    """The arith character tokenizer (in memory): pad 0, BOS 1, EOS 2, ~100 tokens."""
    from ponder.modalities.text.arith import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_folders(tmp_path_factory, char_tokenizer) -> dict[str, Path]:
    """arch -> folder holding a tiny random model + tokenizer written by `save_pretrained`."""
    root = tmp_path_factory.mktemp("tiny_lms")
    folders = {}
    for arch in TINY_ARCHS:
        folder = root / arch
        _tiny_model(arch, char_tokenizer).save_pretrained(folder)
        char_tokenizer.save_pretrained(folder)
        folders[arch] = folder
    return folders


@pytest.fixture(scope="session", params=TINY_ARCHS)
def tiny_folder(request, tiny_model_folders) -> Path:
    """The folder of each tiny architecture in turn (parametrised over llama, qwen2, gpt2)."""
    return tiny_model_folders[request.param]


@pytest.fixture(scope="session")
def tiny_bin_only_folder(tmp_path_factory, char_tokenizer) -> Path:
    """A tiny Llama saved as pytorch_model.bin only (no safetensors)."""
    import torch

    folder = tmp_path_factory.mktemp("tiny_bin_only")
    model = _tiny_model("llama", char_tokenizer)
    # transformers 5 writes safetensors even with safe_serialization=False: save, then swap the weights
    model.save_pretrained(folder, safe_serialization=False)
    for weights in folder.glob("*.safetensors*"):
        weights.unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    char_tokenizer.save_pretrained(folder)
    return folder
