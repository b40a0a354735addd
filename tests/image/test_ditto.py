"""DITTO and DITTO-2 over a tiny class-conditional UNet: the score they optimise rises from plain
sampling's, candidates are independent rows, compute is counted, and bad input is one clear error."""

from __future__ import annotations

import json

import image_tiny
import pytest
import torch

import ponder
from ponder.errors import ConfigError
from ponder.search.scaling import ditto, ditto2, sample


class Brightness:
    """A differentiable toy score: mean pixel value (in [-1, 1]) of the decoded image."""

    name = "brightness"

    def score(self, prompt, outputs):
        import numpy as np

        return torch.tensor([float(np.asarray(o, dtype=np.float64).mean() / 127.5 - 1) for o in outputs])

    def score_tensor(self, prompt, x):
        return x.flatten(1).mean(1)  # [N]


class NotDifferentiable:
    name = "plain-score"

    def score(self, prompt, outputs):
        return torch.zeros(len(outputs))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return ponder.load("image", image_tiny.class_unet_folder(tmp_path_factory.mktemp("unet")), steps=3)


def test_ditto_raises_every_candidates_score_from_plain_samplings(model):
    res = ditto(model, "two", Brightness(), n=3, seed=4, steps=3, opt_steps=6, lr=0.2)
    plain = sample(model, "two", Brightness(), n=3, seed=4, steps=3)
    for cand, base in zip(res.candidates, plain.candidates):
        assert cand.meta["score_before"] == pytest.approx(Brightness().score_tensor(None, _pixels(base.output)),
                                                          abs=0.01)  # step 0 is plain sampling (PNG rounding)
        assert cand.score > cand.meta["score_before"] + 0.05
        assert cand.score == max(cand.meta["score_history"]) or cand.score == pytest.approx(
            max(cand.meta["score_history"]), abs=1e-6)
        assert cand.seed == base.seed
    assert res.best.score == max(c.score for c in res.candidates)
    assert res.compute.backward_passes == 3 * 6 and res.compute.verifier_calls == 3 * 7
    assert res.compute.nfe == 3 * 3 * (6 * 2 + 1)  # forward + checkpoint recompute per Adam step, last score
    assert res.config["strategy"] == "ditto" and res.config["opt_steps"] == 6


def _pixels(image) -> torch.Tensor:
    import numpy as np

    return torch.tensor(np.asarray(image, dtype=np.float32) / 127.5 - 1)[None, None]


def test_ditto_rows_are_independent_and_checkpointing_changes_nothing_but_memory(model):
    three = ditto(model, "one", Brightness(), n=3, seed=2, steps=3, opt_steps=3, lr=0.2)
    one = ditto(model, "one", Brightness(), n=1, seed=2, steps=3, opt_steps=3, lr=0.2)
    assert one.candidates[0].meta["score_history"] == pytest.approx(three.candidates[0].meta["score_history"],
                                                                   abs=1e-5)
    unchecked = ditto(model, "one", Brightness(), n=1, seed=2, steps=3, opt_steps=3, lr=0.2, checkpoint=False)
    assert unchecked.candidates[0].meta["score_history"] == pytest.approx(
        one.candidates[0].meta["score_history"], abs=1e-6)
    assert unchecked.compute.nfe == 1 * 3 * (3 + 1)


def test_ditto2_optimises_through_the_one_step_surrogate_and_reports_the_carry_over(model):
    res = ditto2(model, "two", Brightness(), n=3, seed=4, steps=3, opt_steps=8, lr=0.2)
    plain = ditto(model, "two", Brightness(), n=3, seed=4, steps=3, opt_steps=1, lr=0.2)
    for cand, base in zip(res.candidates, plain.candidates):
        assert cand.meta["score_before"] == pytest.approx(base.meta["score_before"], abs=1e-5)
        assert cand.meta["surrogate_after"] > cand.meta["surrogate_before"]
    assert res.config["surrogate"].startswith("the teacher's one-step x0 prediction")
    gains = [c.meta["score_after"] - c.meta["score_before"] for c in res.candidates]
    assert res.config["multi_step_gain"] == pytest.approx(sum(gains) / 3, abs=1e-6)
    assert res.config["carry_over"] == pytest.approx(res.config["multi_step_gain"] / res.config["surrogate_gain"])
    assert res.compute.backward_passes == 3 * 8
    assert res.compute.nfe == 3 * 3 * 2 + 3 * 9  # two multi-step decodes + one surrogate call per Adam step


class Misleading:
    """A surrogate whose one-step x0 is the teacher's negated: following its gradient lowers the real score."""

    name = "misleading"

    def __init__(self, model):
        self.model = model

    def __getattr__(self, attr):
        return getattr(self.model, attr)

    def predict_x0(self, x_t, t, cond):
        return -self.model.predict_x0(x_t, t, cond)


def test_ditto2_never_returns_a_candidate_below_its_start(model):
    """A surrogate that misleads: the multi-step score falls, and each candidate keeps its initial decode."""
    for student, kept in ((Misleading(model), "initial"), (None, "optimised")):
        res = ditto2(model, "two", Brightness(), n=3, seed=4, steps=3, opt_steps=4, lr=0.5, student=student)
        for cand in res.candidates:
            before, after = cand.meta["score_before"], cand.meta["score_after"]
            assert cand.meta["kept"] == kept and (after < before) == (kept == "initial")
            assert cand.score == pytest.approx(max(before, after), abs=1e-6)
            again = float(Brightness().score("two", [cand.output])[0])  # from the 8-bit image itself
            assert again == pytest.approx(cand.score, abs=1e-2)  # the output is the decode it says it kept


def test_ditto2_takes_a_student_of_the_same_latents(model, tmp_path):
    student = ponder.load("image", image_tiny.class_unet_folder(tmp_path / "student"), steps=1)
    res = ditto2(model, "two", Brightness(), n=2, seed=1, steps=3, opt_steps=3, lr=0.2, student=student)
    assert res.config["surrogate"].startswith("student")
    wide = ponder.load("image", image_tiny.class_unet_folder(tmp_path / "wide", size=16))
    with pytest.raises(ConfigError, match="share the teacher's latents"):
        ditto2(model, "two", Brightness(), n=1, seed=1, steps=3, opt_steps=1, student=wide)


@pytest.mark.parametrize("strategy", [ditto, ditto2])
def test_bad_optimisation_input_is_one_clear_error(model, strategy):
    with pytest.raises(ConfigError, match="needs a differentiable verifier"):
        strategy(model, "two", NotDifferentiable(), n=1, steps=2)
    with pytest.raises(ConfigError, match="opt_steps must be a positive integer"):
        strategy(model, "two", Brightness(), n=1, steps=2, opt_steps=0)
    with pytest.raises(ConfigError, match=r"lr must be a number > 0"):
        strategy(model, "two", Brightness(), n=1, steps=2, lr=0)
    with pytest.raises(ConfigError, match="selects by a verifier"):
        strategy(model, "two", None, n=1, steps=2)


def test_ditto_from_the_cli_writes_the_optimised_images_and_its_cost(tmp_path, capsys):
    from ponder.cli import main

    folder = image_tiny.class_unet_folder(tmp_path / "unet")
    out = tmp_path / "run"
    assert main(["generate", "image", "--model", str(folder), "--prompt", "two", "--strategy", "ditto", "--n", "2",
                 "--verifier", "aesthetic", "--steps", "2", "--option", "opt_steps=2", "--option", "lr=0.1",
                 "--out", str(out)]) == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["compute"]["backward_passes"] == 4 and doc["config"]["strategy"] == "ditto"
    assert all("score_before" in c["meta"] for c in doc["candidates"])
    assert sorted(p.name for p in out.iterdir()) == ["best.png", "candidate_000.png", "candidate_001.png",
                                                     "result.json"]
    assert "backward passes 4" in capsys.readouterr().err
    code = main(["generate", "text", "--model", "zoo:arith", "--prompt", "Q: 1+2\n", "--strategy", "ditto",
                 "--verifier", "exact"])
    assert code == 2 and "diffusion model" in capsys.readouterr().err


def test_ditto_on_zoo_digits_raises_the_classifiers_log_probability():
    model = ponder.load("image", "zoo:digits")
    verifier = ponder.load_verifier("image", "classifier", score="logprob")
    res = ponder.generate(model, "3", strategy="ditto", n=4, verifier=verifier, seed=0, steps=6, opt_steps=5, lr=0.1)
    before = [c.meta["score_before"] for c in res.candidates]
    after = [c.score for c in res.candidates]
    assert all(a >= b for a, b in zip(after, before)) and sum(after) / 4 > sum(before) / 4 + 0.05
    assert res.config["diversity"] > 0  # the modality's measure, recorded by ponder.generate


@pytest.mark.parametrize("name", ["classifier", "aesthetic"])
def test_differentiable_image_scores_equal_the_png_path(name):
    from ponder.search.core import candidate_generators

    model = ponder.load("image", "zoo:digits")
    verifier = ponder.load_verifier("image", name)
    with torch.no_grad():
        x0 = model.sample(model.noise(candidate_generators(0, range(4))), model.condition("7", 4), 8)
        on_png = verifier.score("7", model.decode(x0))
    pixels = model.decode_tensor(x0).requires_grad_(True)
    on_tensor = verifier.score_tensor("7", pixels)  # [4]
    assert torch.allclose(on_tensor.detach(), on_png, atol=5e-3)  # the PNG rounds pixels to 1/255
    on_tensor.sum().backward()
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def smoke_zoo(tmp_path_factory):
    """A zoo folder with the shipped teacher and a smoke-trained digits-student beside it."""
    import shutil

    from ponder.modalities.image import train_student

    zoo_dir = tmp_path_factory.mktemp("zoo")
    shutil.copytree(ponder.zoo.folder("digits"), zoo_dir / "digits")
    card = train_student.train("digits-student", zoo_dir, log=lambda line: None, smoke=True)
    return zoo_dir, card


def test_the_student_recipe_distils_a_one_step_model_ditto2_can_use(smoke_zoo):
    from ponder.modalities.image import train_student

    zoo_dir, card = smoke_zoo
    assert card["metrics"]["heldout_pairs"] == train_student.SMOKE["heldout_pairs"]
    assert card["reproduce"] == "ponder zoo train digits-student"
    student = ponder.load("image", zoo_dir / "digits-student")
    assert student.timesteps(1)[0] == 999.0  # trailing spacing: one step starts from pure noise
    teacher = ponder.load("image", "zoo:digits")
    res = ditto2(teacher, "3", Brightness(), n=2, seed=0, steps=4, opt_steps=2, lr=0.1, student=student)
    assert res.config["surrogate"].startswith("student")
    from ponder.errors import ZooError

    with pytest.raises(ZooError, match="builds digits-student"):
        train_student.train("digits", zoo_dir, smoke=True)


def test_a_zoo_teacher_brings_its_own_student_to_ditto2(smoke_zoo, monkeypatch):
    import dataclasses

    from ponder.modalities import registry

    zoo_dir, _ = smoke_zoo
    table = dict(registry.specs())
    image = table["image"]
    entries = tuple(dataclasses.replace(e, root=zoo_dir) if e.name == "digits-student" else e for e in image.zoo)
    table["image"] = dataclasses.replace(image, zoo=entries)  # the student "ships" in the smoke zoo
    monkeypatch.setattr(registry, "specs", lambda: table)
    model = ponder.load("image", "zoo:digits")
    res = ponder.generate(model, "3", strategy="ditto-2", n=2, verifier=Brightness(), steps=4, opt_steps=2, lr=0.1)
    assert res.config["surrogate"] == "student zoo:digits-student"
    none = ponder.generate(model, "3", strategy="ditto-2", n=2, verifier=Brightness(), steps=4, opt_steps=2,
                           lr=0.1, student=None)
    assert none.config["surrogate"].startswith("the teacher's one-step x0 prediction")
