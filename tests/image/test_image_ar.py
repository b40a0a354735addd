"""Autoregressive images: a tiny random LlamaForCausalLM over a patch codebook, saved and loaded back
through `ponder.load("image", folder)`; encode / decode / errors; SJD and Jacobi drive it; the
digits-ar recipe's smoke path runs end to end."""

from __future__ import annotations

import pytest
import torch

from ponder.errors import InputError, ModelLoadError
from ponder.kernels.sampling import SamplingParams
from ponder.modalities.image.ar import ARImageModel, ImageTokens
from ponder.modalities.image.vq import PatchCodebook
from ponder.search.core import candidate_generators
from ponder.search.decoding import get_decoder, jacobi, plain

CODES = 6
GRID = 4  # 8x8 images in 2x2 blocks: 16 tokens per image


def _codebook() -> PatchCodebook:
    levels = torch.linspace(-1, 1, CODES)[:, None]  # flat blocks of six grey levels
    return PatchCodebook(levels.expand(CODES, 4).clone(), patch=2, image_size=2 * GRID)


@pytest.fixture(scope="module")
def ar_folder(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    layout = ImageTokens(CODES, ["cat", "dog", "7"], GRID * GRID, GRID)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=layout.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         initializer_range=0.4, eos_token_id=None, bos_token_id=layout.bos_token_id,
                         pad_token_id=layout.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny_ar") / "ar"
    ARImageModel(LlamaForCausalLM(config), _codebook(), layout, name="tiny").save(folder)
    return folder


@pytest.fixture(scope="module")
def ar(ar_folder):
    import ponder

    return ponder.load("image", str(ar_folder))


def test_codebook_round_trips_its_own_codes_and_saves():
    book = _codebook()
    ids = torch.randint(0, CODES, (3, GRID * GRID), generator=torch.Generator().manual_seed(0))
    assert torch.equal(book.encode(book.decode(ids)), ids)
    assert book.background() == 0  # the code nearest an all -1 block


def test_loaded_model_encodes_classes_and_decodes_images(ar):
    assert isinstance(ar, ARImageModel) and ar.modality == "image"
    assert ar.encode("dog") == [CODES + 3, CODES + 1]  # [BOS, class token]
    assert ar.encode(2) == ar.encode("7")
    image = ar.decode([CODES - 1] * (GRID * GRID))
    assert image.size == (2 * GRID, 2 * GRID) and image.mode == "L"
    assert image.getextrema() == (255, 255)  # the brightest code everywhere
    short = ar.decode([CODES - 1])  # a partial image is completed with background
    assert short.getpixel((0, 0)) == 255 and short.getpixel((2 * GRID - 1, 2 * GRID - 1)) == 0


def test_bad_prompts_sizes_and_folders_are_clear_errors(ar, tmp_path):
    with pytest.raises(InputError, match="not a class.*allowed: cat, dog, 7"):
        ar.encode("horse")
    with pytest.raises(InputError, match="not a size this model can make"):
        ar.check_length(2, GRID * GRID + 1)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="neither a diffusers pipeline"):
        __import__("ponder").load("image", str(tmp_path))


def test_only_image_codes_are_ever_sampled(ar):
    out = plain(ar, [ar.encode("cat")] * 8, sampling=SamplingParams(temperature=2.0), max_new_tokens=GRID * GRID,
                generators=candidate_generators(0, range(8)))
    assert all(len(t) == GRID * GRID and max(t) < CODES for t in out.tokens)
    assert out.stop_reasons == ["length"] * 8  # images have no EOS


def test_jacobi_and_greedy_sjd_equal_plain_greedy_on_image_tokens(ar):
    prompts = [ar.encode(c) for c in ("cat", "dog", "7")]
    greedy = SamplingParams(temperature=0.0)
    ref = plain(ar, prompts, sampling=greedy, max_new_tokens=GRID * GRID)
    for init in ("random", "horizon"):
        out = jacobi(ar, prompts, sampling=greedy, max_new_tokens=GRID * GRID, draft_len=6, init=init)
        assert out.tokens == ref.tokens
    assert get_decoder("sjd")(ar, prompts, sampling=greedy, max_new_tokens=GRID * GRID, init="horizon").tokens \
        == ref.tokens


def test_sampled_sjd_rows_equal_single_rows_on_image_tokens(ar):
    prompts = [ar.encode(c) for c in ("cat", "dog", "7")]
    for name in ("sjd", "mc-sjd"):
        fn = get_decoder(name)
        batch = fn(ar, prompts, sampling=SamplingParams(), max_new_tokens=GRID * GRID, draft_len=6, init="horizon",
                   generators=candidate_generators(5, range(3)))
        for row in range(3):
            alone = fn(ar, prompts[row:row + 1], sampling=SamplingParams(), max_new_tokens=GRID * GRID, draft_len=6,
                       init="horizon", generators=candidate_generators(5, [row]))
            assert alone.tokens[0] == batch.tokens[row]
        assert all(max(t) < CODES for t in batch.tokens)


def test_digits_ar_recipe_smoke_path(tmp_path):
    import ponder
    from ponder import zoo

    card = zoo.train("digits-ar", out_dir=tmp_path, smoke=True, log=lambda _msg: None)
    assert card["name"] == "digits-ar" and card["recipe"]["steps"] == 2
    assert card["metrics"]["heldout_bits_per_token"] > 0
    model = ponder.load("image", str(tmp_path / "digits-ar"))
    assert model.tokens_per_image == 64 and model.row_tokens == 8
    assert model.encode("3") == [model.layout.bos_token_id, model.layout.num_codes + 3]
    out = get_decoder("sjd")(model, [model.encode("3")], sampling=SamplingParams(), max_new_tokens=64,
                             generators=candidate_generators(0, [0]))
    assert model.decode(out.tokens[0]).size == (16, 16)
