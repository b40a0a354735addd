"""Janus adapter: a tiny random `JanusForConditionalGeneration` (real class) with a word-level tokenizer,
saved and loaded back through `ponder.load("image", folder)`; its greedy image tokens equal
transformers' own `generate(generation_mode="image")` with classifier-free guidance; Jacobi / SJD
drive it (batch rows equal single rows); decode gives an RGB image."""

from __future__ import annotations

import pytest
import torch

from ponder.errors import InputError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import candidate_generators
from ponder.search.decoding import get_decoder, plain

WORDS = ["a", "red", "blue", "cat", "dog", "on", "grass"]
SPECIAL = ["<pad>", "<bos>", "<eos>", "<begin_of_image>", "<end_of_image>", "<image_placeholder>"]
TOKENS = 16  # 4x4 image tokens -> 16x16 pixels


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(scope="module")
def janus_folder(tmp_path_factory):
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusVisionConfig,
        JanusVQVAEConfig,
        LlamaConfig,
    )

    torch.manual_seed(0)
    text = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.5)
    vision = JanusVisionConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                               patch_size=4, projection_dim=32, num_image_tokens=TOKENS)
    vq = JanusVQVAEConfig(embed_dim=8, num_embeddings=24, latent_channels=32, base_channels=32,
                          channel_multiplier=[1, 1, 1], num_res_blocks=1, projection_dim=32,
                          image_token_embed_dim=32, num_hidden_layers=1, initializer_range=0.5)
    model = JanusForConditionalGeneration(JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                                                      image_token_id=5)).eval()
    with torch.no_grad():  # wide heads: clear argmax margins, so greedy paths do not hinge on rounding
        model.model.generation_head.vision_head.weight.mul_(20)
    model.generation_config.bos_token_id, model.generation_config.pad_token_id = 1, 0
    model.generation_config.guidance_scale = 2.0
    folder = tmp_path_factory.mktemp("tiny_janus") / "janus"
    model.save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def janus(janus_folder):
    import ponder

    return ponder.load("image", str(janus_folder))


def test_loads_as_an_image_sequence_model(janus):
    assert janus.modality == "image" and janus.tokens_per_image == TOKENS and janus.row_tokens == 4
    assert janus.guidance_scale == 2.0  # from the saved generation config
    assert janus.encode("a red cat") == [1, 6, 7, 9, 3]  # BOS, words, begin-of-image
    image = janus.decode(list(range(TOKENS)))
    assert image.size == (16, 16) and image.mode == "RGB"
    with pytest.raises(InputError, match="not a size this model can make"):
        janus.check_length(5, TOKENS + 1)


def test_greedy_tokens_equal_transformers_janus_generate(janus):
    prompts = ["a red cat", "a blue dog on grass"]
    janus.model.generation_config.generation_kwargs = {"boi_token_id": janus.boi_token_id}  # what generate reads
    ours = plain(janus, [janus.encode(p) for p in prompts], sampling=SamplingParams(temperature=0.0),
                 max_new_tokens=TOKENS)
    for row, prompt in enumerate(prompts):
        ids = torch.tensor([janus.encode(prompt)])  # the prompt ends in begin-of-image, as Janus' processor makes it
        ref = janus.model.generate(ids, attention_mask=torch.ones_like(ids), generation_mode="image",
                                   do_sample=False, guidance_scale=2.0)  # the very weights ponder loaded
        assert ours.tokens[row] == ref[0].tolist()
    assert len(set(ours.tokens[0])) > 3 and ours.tokens[0] != ours.tokens[1]  # varied paths, not a constant


def test_jacobi_equals_plain_and_sjd_rows_equal_single_rows(janus):
    ids = [janus.encode(p) for p in ("a red cat", "a blue dog on grass", "grass")]
    greedy = SamplingParams(temperature=0.0)
    ref = plain(janus, ids, sampling=greedy, max_new_tokens=TOKENS)
    assert get_decoder("jacobi")(janus, ids, sampling=greedy, max_new_tokens=TOKENS, draft_len=5,
                                 init="horizon").tokens == ref.tokens
    batch = get_decoder("mc-sjd")(janus, ids, sampling=SamplingParams(), max_new_tokens=TOKENS, draft_len=5,
                                  generators=candidate_generators(2, range(3)))
    for row in range(3):
        alone = get_decoder("mc-sjd")(janus, ids[row:row + 1], sampling=SamplingParams(), max_new_tokens=TOKENS,
                                      draft_len=5, generators=candidate_generators(2, [row]))
        assert alone.tokens[0] == batch.tokens[row]
