"""The ``tones`` teacher recipe and its ``PonderMelDiffusion`` folder: the smoke recipe end to end into a temp
zoo, loaded through ``ponder.load("music", folder)``, generating WAVs; tag prompts (conditioning reaches the
network, unknown tags are one clear error, "" is unconditional); exact resume from a checkpoint; a
differentiable, deterministic mel -> waveform decode; the full recipe against its shipped card (slow)."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ponder
from ponder.errors import InputError, ModelLoadError
from ponder.modalities.music import mel as melspec
from ponder.modalities.music import tones
from ponder.modalities.music import train as recipe
from ponder.search.core import Audio

QUIET = {"log": lambda *a: None}
LEVEL = "intensity=[-30,-10]"


@pytest.fixture(scope="module")
def smoke_zoo(tmp_path_factory):
    """The smoke recipe (2 steps) trained once into a fresh zoo folder: (zoo dir, card)."""
    root = tmp_path_factory.mktemp("tones-zoo")
    return root, recipe.train("tones", root, smoke=True, **QUIET)


@pytest.fixture(scope="module")
def model(smoke_zoo):
    return ponder.load("music", smoke_zoo[0] / "tones", seconds=0.5)


def test_smoke_recipe_writes_the_documented_folder_with_its_card(smoke_zoo):
    root, card = smoke_zoo
    folder = root / "tones"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "PonderMelDiffusion" and index["unet"] == ["diffusers", "UNet1DModel"]
    for part in ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
                 "tag_encoder/config.json", "tag_encoder/model.safetensors", "mel.json", "checkpoint/state.pt"):
        assert (folder / part).is_file(), part
    assert json.loads((folder / "scheduler/scheduler_config.json").read_text())["_class_name"] == "DDIMScheduler"
    assert not list(root.glob("*.saving"))  # swapped into place whole
    assert json.loads((folder / "card.json").read_text()) == json.loads(json.dumps(card))
    assert card["reproduce"] == "ponder zoo train tones" and card["recipe"]["steps"] == 2
    assert card["metrics"]["heldout_clips"] == recipe.SMOKE["heldout_clips"] and card["metrics"]["resumed_from"] == 0
    assert card["metrics"]["heldout_loss"] > 0 and card["metrics"]["mel_stats_distance"] > 0
    assert "'teacher' half" in card["data"] and card["mel"] == json.loads((folder / "mel.json").read_text())


def test_the_user_path_generates_wavs_with_a_control_as_verifier(smoke_zoo, model, tmp_path, capsys):
    assert model.info()["family"] == "mel-diffusion" and model.sample_rate == 16000 and model.sampler.name == "ddim"
    res = ponder.generate(model, "pluck, high, fast", strategy="best-of-n", n=2, verifier=LEVEL, steps=2, seed=0)
    assert all(isinstance(c.output, Audio) and tuple(c.output.waveform.shape) == (8000,) for c in res.candidates)
    assert res.best.score == max(c.score for c in res.candidates) and res.compute.verifier_calls == 2
    assert res.compute.nfe == 2 * 2 * 2  # 2 candidates x 2 steps x (conditional + unconditional row)
    from ponder.cli import main

    out = tmp_path / "out"
    assert main(["generate", "music", "--model", str(smoke_zoo[0] / "tones"), "--prompt", "saw, low",
                 "--strategy", "best-of-n", "--n", "2", "--verifier", LEVEL, "--steps", "2", "--seconds", "0.5",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "best.wav")
    with wave.open(str(out / "best.wav")) as w:
        assert w.getframerate() == 16000 and w.getnframes() == 8000 and w.getnchannels() == 1


def test_tags_reach_the_network_and_the_empty_prompt_is_unconditional(model):
    x_T = model.noise([torch.Generator().manual_seed(3)])  # [1, mels, frames]
    with torch.no_grad():
        outs = {p: model.sample(x_T, model.condition(p), 2) for p in ("pluck, high, fast", "saw, high, fast", "")}
    assert not torch.allclose(outs["pluck, high, fast"], outs["saw, high, fast"], atol=1e-4)
    assert not torch.allclose(outs["pluck, high, fast"], outs[""], atol=1e-4)
    empty = model.condition("")
    assert empty.uncond is None  # no guidance pair: the null row is the prompt
    assert torch.equal(empty.cond["tags"], model.family.tag_encoder.null[None])
    assert model.condition("fast pluck").meta["tags"] == ["fast", "pluck"]  # any subset, commas or spaces


def test_unknown_or_clashing_tags_are_one_clear_input_error(model):
    with pytest.raises(InputError, match="unknown tag 'banjo'") as err:
        ponder.generate(model, "banjo, high", strategy="best-of-n", n=1, verifier=LEVEL, steps=1)
    assert ", ".join(tones.TAG_VOCAB) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="two timbre tags"):
        model.condition("pluck, saw")
    with pytest.raises(InputError, match="prompted with tags"):
        model.condition(None)


def test_resume_continues_the_step_count_and_equals_an_uninterrupted_run(smoke_zoo, tmp_path):
    first = recipe.train("tones", tmp_path, smoke=True, steps=1, **QUIET)  # "interrupted" after 1 step
    assert first["metrics"]["resumed_from"] == 0 and [h["step"] for h in first["history"]] == [1]
    resumed = recipe.train("tones", tmp_path, smoke=True, steps=2, **QUIET)
    assert resumed["metrics"]["resumed_from"] == 1 and [h["step"] for h in resumed["history"]] == [1, 2]
    weights = "tones/unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(tmp_path / weights)), load_file(str(smoke_zoo[0] / weights))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the same run as the fixture's
    assert resumed["metrics"]["heldout_loss"] == smoke_zoo[1]["metrics"]["heldout_loss"]


def test_mel_decode_is_differentiable_deterministic_and_inverts_the_features(model):
    x0 = (torch.rand(1, *model.shape) * 1.6 - 0.9).requires_grad_(True)  # inside the clamp range
    wave_a = model.decode_tensor(x0)  # [1, T]
    assert wave_a.shape == (1, 8000)
    wave_a.pow(2).mean().backward()
    assert torch.isfinite(x0.grad).all() and x0.grad.abs().sum() > 0
    assert torch.equal(model.decode_tensor(x0.detach()), wave_a.detach())  # rand_init=False: no randomness
    # noise -> sampler -> decode -> control: the chain DITTO backpropagates through
    x_T = model.noise([torch.Generator().manual_seed(0)]).requires_grad_(True)
    clean = model.sample(x_T, model.condition("square, mid"), 2)
    control = ponder.load_verifier("music", LEVEL, model=model)
    loss = control.loss(model.decode_tensor(clean)).sum()  # [1] -> scalar
    loss.backward()
    assert torch.isfinite(x_T.grad).all() and x_T.grad.abs().sum() > 0
    # a real clip: features -> decode -> features again is close (Griffin-Lim recovers the magnitudes)
    mel = model.family.mel
    clip = tones.generate(1)
    x = melspec.features(torch.from_numpy(clip.waveform)[None], mel)  # [1, mels, frames]
    with torch.no_grad():
        again = melspec.features(model.family.decoder(x), mel)
    magnitude, magnitude_again = melspec.denormalise(x, mel), melspec.denormalise(again, mel)
    assert float((magnitude_again - magnitude).norm() / magnitude.norm()) < 0.25


def test_a_broken_folder_is_a_model_load_error(smoke_zoo, tmp_path):
    folder = tmp_path / "tones"
    shutil.copytree(smoke_zoo[0] / "tones", folder)
    settings = json.loads((folder / "mel.json").read_text())
    (folder / "mel.json").write_text(json.dumps(dict(settings, hop=128)))
    with pytest.raises(ModelLoadError, match="unknown spectrogram settings \\['hop'\\]"):
        ponder.load("music", folder)
    (folder / "mel.json").write_text(json.dumps(dict(settings, n_mels=32)))
    with pytest.raises(ModelLoadError, match="32 mel bands"):
        ponder.load("music", folder)


@pytest.mark.slow
def test_full_recipe_reproduces_the_shipped_card(tmp_path):
    shipped_path = Path(recipe.__file__).parent / "zoo" / "tones" / "card.json"
    assert shipped_path.is_file(), "zoo:tones ships with the repo; build it with `ponder zoo train tones`"
    shipped = json.loads(shipped_path.read_text())
    card = recipe.train("tones", tmp_path, **QUIET)
    assert json.loads(json.dumps(card["recipe"])) == shipped["recipe"] and card["parameters"] == shipped["parameters"]
    assert card["metrics"]["heldout_loss"] == pytest.approx(shipped["metrics"]["heldout_loss"], rel=0.05)
    assert card["metrics"]["mel_stats_distance"] == pytest.approx(shipped["metrics"]["mel_stats_distance"], abs=0.05)
