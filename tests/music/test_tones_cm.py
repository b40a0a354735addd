"""The ``tones-cm`` consistency-distillation recipe: the smoke recipe end to end (teacher then student) into a
temp zoo, the student folder loading as a one-step, guidance-free model through ``ponder.load``, the
consistency parameterisation's boundary condition, the teacher's ODE step, and DITTO-2 through the student."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import ponder
from ponder.errors import ModelLoadError, ZooError
from ponder.modalities.music import train as teacher_recipe
from ponder.modalities.music import train_cm

QUIET = {"log": lambda *a: None}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("cm-zoo")
    teacher_recipe.train("tones", root, smoke=True, **QUIET)
    return root, train_cm.train("tones-cm", root, smoke=True, **QUIET)


def test_smoke_recipe_writes_a_one_step_guidance_free_student(zoo):
    root, card = zoo
    folder = root / "tones-cm"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "PonderMelDiffusion"
    assert index["default_guidance_scale"] == 1.0 and index["default_steps"] == 1
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert sched["timestep_spacing"] == "trailing" and sched["prediction_type"] == "v_prediction"
    assert json.loads((folder / "card.json").read_text()) == json.loads(json.dumps(card))
    assert (folder / "checkpoint" / "state.pt").is_file() and not list(root.glob("*.saving"))
    metrics = card["metrics"]
    assert metrics["heldout"] == train_cm.SMOKE["heldout"] and metrics["student_nfe_per_sample"] == 1
    assert metrics["mse_to_teacher_student_one_step"] > 0 and card["teacher"] == "zoo:tones"
    student = ponder.load("music", folder, seconds=0.5)
    assert student.guidance_scale == 1.0 and student.default_steps == 1 and student.timesteps(1)[0] == 999
    x_T = student.noise([torch.Generator().manual_seed(0)])
    before = student.nfe
    with torch.no_grad():
        x0 = student.predict_x0(x_T, student.timesteps(1)[0], student.condition("pluck, high"))
    assert student.nfe - before == 1 and x0.shape == x_T.shape  # one network call, no guidance pair
    assert ponder.load("music", folder, guidance_scale=2.0).guidance_scale == 2.0  # the user still overrides


def test_the_student_needs_its_teacher_and_names_itself(tmp_path):
    with pytest.raises(ZooError, match="ponder zoo train tones"):
        train_cm.train("tones-cm", tmp_path, smoke=True, **QUIET)
    with pytest.raises(ZooError, match="tones-cm"):
        train_cm.train("tones", tmp_path, smoke=True, **QUIET)


def test_a_bad_default_in_the_folder_is_one_clear_load_error(zoo, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(zoo[0] / "tones-cm", folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "default_guidance_scale": 0.5}))
    with pytest.raises(ModelLoadError, match="default_guidance_scale must be a number >= 1, got 0.5"):
        ponder.load("music", folder)
    (folder / "model_index.json").write_text(json.dumps({**index, "default_steps": 0}))
    with pytest.raises(ModelLoadError, match="default_steps must be an integer >= 1, got 0"):
        ponder.load("music", folder)


def test_consistency_function_meets_its_boundary_condition():
    c_skip, c_out = train_cm.boundary_scalings(torch.tensor([-1, 0, 19, 999]))
    assert c_skip[0] == 1 and c_out[0] == 0 and c_skip[1] == 1 and c_out[1] == 0  # f(x, t_min) = x
    assert c_skip[3] < 1e-6 and abs(c_out[3] - 1) < 1e-6  # at T the student predicts x0 alone
    assert 0 < c_skip[2] < 1
    cfg = train_cm.CMRecipe()
    grid = train_cm.grid(cfg, 1000)
    assert grid[0] == 999 and grid[-2] == 19 and grid[-1] == -1 and len(grid) == 51


def test_teacher_step_to_the_clean_end_is_the_clipped_x0(zoo):
    from ponder.modalities.music.families import MelDiffusion

    pipe = MelDiffusion.load_pipeline(zoo[0] / "tones", "PonderMelDiffusion", {})
    teacher = teacher_recipe.Teacher(pipe.unet, pipe.tag_encoder).eval()
    scales = train_cm.Scales(pipe.scheduler)
    x_t = torch.randn(2, 64, pipe.unet.config.sample_size, generator=torch.Generator().manual_seed(1))
    t, clean = torch.tensor([500, 500]), torch.tensor([-1, -1])
    tags = torch.zeros(2, pipe.tag_encoder.multi_hot([[]]).shape[-1])
    out = train_cm.teacher_step(teacher, scales, x_t, t, clean, tags, guidance=2.0)
    with torch.no_grad():
        a, s = scales(t)
        expected = (a * x_t - s * teacher(x_t, t, tags)).clamp(-1, 1)  # untagged rows: no guidance
    torch.testing.assert_close(out, expected)
    # the consistency function at t = 0 returns its input (c_skip = 1, c_out = 0)
    with torch.no_grad():
        torch.testing.assert_close(train_cm.consistency(teacher, scales, x_t, torch.tensor([0, 0]), tags), x_t)


def test_ditto2_runs_through_the_student_and_says_so(zoo):
    teacher = ponder.load("music", zoo[0] / "tones", seconds=0.5)
    student = ponder.load("music", zoo[0] / "tones-cm", seconds=0.5)
    res = ponder.generate(teacher, "saw", strategy="ditto-2", n=1, steps=2, opt_steps=2, lr=0.05,
                          controls=["intensity=[-30,-10]"], student=student)
    assert res.config["surrogate"].startswith("student") and res.compute.backward_passes == 2


def test_direct_student_recipe_matches_the_loaded_teachers_own_chain(zoo):
    from ponder.modalities.music import train_student
    from ponder.modalities.music.families import MelDiffusion

    root = zoo[0]
    pipe = MelDiffusion.load_pipeline(root / "tones", "PonderMelDiffusion", {})
    net = teacher_recipe.Teacher(pipe.unet, pipe.tag_encoder).eval()
    model = ponder.load("music", root / "tones")
    x_T = model.noise([torch.Generator().manual_seed(s) for s in (1, 2)])
    prompts = ["saw, high", ""]  # a guided row and an unconditional one
    tags = pipe.tag_encoder.multi_hot([pipe.tag_encoder.parse(p) for p in prompts])
    batched = train_student.teacher_pairs(net, pipe.scheduler, tags, x_T, 3, 2.0, batch=2)
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            torch.testing.assert_close(batched[i:i + 1], model.sample(x_T[i:i + 1], model.condition(prompt), 3),
                                       atol=1e-5, rtol=1e-4)
    card = train_student.train("tones-student", root, smoke=True, **QUIET)
    student = ponder.load("music", root / "tones-student")
    assert student.default_steps == 1 and student.guidance_scale == 1.0 and card["teacher"] == "zoo:tones"
    assert "direct distillation" in json.loads((root / "tones-student" / "model_index.json").read_text())[
        "distilled_from"] and card["metrics"]["pair_seconds"] >= 0
