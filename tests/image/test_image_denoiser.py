"""The diffusers Denoiser: exact against diffusers' own pipelines / schedulers with the same latents,
and the sampler maths (x0, re-noising, steps between arbitrary times) with an oracle network."""

from __future__ import annotations

import image_tiny
import numpy as np
import pytest
import torch

import ponder
from ponder.errors import ConfigError, InputError, ModelLoadError
from ponder.search.core import Denoiser


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    return {
        "unet": image_tiny.class_unet_folder(root / "a"),
        "unet-v": image_tiny.class_unet_folder(root / "b", prediction_type="v_prediction"),
        "sd": image_tiny.sd_folder(root),
        "sd-euler": image_tiny.sd_folder(root, "EulerDiscreteScheduler"),
        "sdxl": image_tiny.sdxl_folder(root),
        "dit": image_tiny.dit_folder(root),
        "sd3": image_tiny.sd3_folder(root),
    }


@pytest.mark.parametrize("which", ["unet", "unet-v"])
def test_class_unet_ddim_equals_diffusers_ddim_scheduler_loop(folders, which):
    from diffusers import DDIMScheduler

    model = ponder.load("image", folders[which])
    assert isinstance(model, Denoiser) and model.labels == image_tiny.LABELS
    x = model.noise(gens(0, 1))  # [2, 1, 8, 8]
    ours = model.sample(x, model.condition("one", 2), 4)
    sched = DDIMScheduler.from_pretrained(folders[which] / "scheduler")
    sched.set_timesteps(4)
    ref = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            pred = model.net(ref, t, class_labels=torch.tensor([1, 1])).sample
            ref = sched.step(pred, t, ref, eta=0.0).prev_sample
    assert torch.allclose(ours, ref, atol=1e-5)
    assert model.nfe == 2 * 4  # rows x steps


@pytest.mark.parametrize("which", ["sd", "sd-euler", "sdxl"])
def test_stable_diffusion_latents_and_pixels_equal_the_pipeline(folders, which):
    model = ponder.load("image", folders[which])
    assert model.sampler.name == ("euler" if which == "sd-euler" else "ddim")
    x = model.noise(gens(3, 4))  # [2, 4, 8, 8]: what latents= takes
    cond = model.condition("the cat", 2)
    ours = model.sample(x, cond, 3)
    assert model.nfe == 2 * 2 * 3  # classifier-free guidance: a pair per row and step
    ref = model.pipe(prompt=["the cat"] * 2, num_inference_steps=3, latents=x.clone(), output_type="latent").images
    assert torch.allclose(ours, ref, atol=1e-5)
    pil = model.pipe(prompt=["the cat"] * 2, num_inference_steps=3, latents=x.clone()).images
    mine = model.decode(ours)
    assert mine[0].size == (16, 16) and mine[0].mode == "RGB"
    diff = np.abs(np.asarray(mine[1], dtype=int) - np.asarray(pil[1], dtype=int))
    assert diff.max() <= 1  # same bytes up to a rounding flip from 1e-6 latent differences


def test_euler_karras_sigmas_equal_the_pipeline_with_a_karras_euler_scheduler(folders):
    from diffusers import EulerDiscreteScheduler

    model = ponder.load("image", folders["sd-euler"], sampler="euler-karras")
    x = model.noise(gens(8))
    ours = model.sample(x, model.condition("the cat", 1), 4)
    model.pipe.scheduler = EulerDiscreteScheduler.from_config(model.pipe.scheduler.config, use_karras_sigmas=True)
    ref = model.pipe(prompt="the cat", num_inference_steps=4, latents=x.clone(), output_type="latent").images
    assert torch.allclose(ours, ref, atol=1e-5)
    plain = ponder.load("image", folders["sd-euler"])
    assert model.timesteps(4) != plain.timesteps(4)  # a different grid, not the default one


def test_dit_with_guidance_equals_dit_pipeline(folders):
    model = ponder.load("image", folders["dit"])
    assert model.labels[:2] == ["tench, Tinca tinca", "goldfish"] and model.guidance_scale == 4.0
    x = model.noise(gens(5, 6))
    ours = model.decode(model.sample(x, model.condition("goldfish", 2), 3))
    ref = model.pipe(class_labels=[1, 1], num_inference_steps=3, generator=gens(5, 6), output_type="np").images
    assert np.array_equal(np.stack([np.asarray(im) for im in ours]), (ref * 255).round().astype("uint8"))


def test_sd3_flow_matching_equals_the_pipeline(folders):
    model = ponder.load("image", folders["sd3"])
    assert model.sampler.name == "flow"
    x = model.noise(gens(7))
    ours = model.sample(x, model.condition("a 7", 1), 3)
    ref = model.pipe(prompt="a 7", num_inference_steps=3, latents=x.clone(), output_type="latent").images
    assert torch.allclose(ours, ref, atol=1e-5)
    assert ours.abs().mean() > 0.1  # not a degenerate all-zero comparison


def test_noise_is_diffusers_randn_tensor_with_one_generator_per_row(folders):
    from diffusers.utils.torch_utils import randn_tensor

    model = ponder.load("image", folders["sd"])
    assert torch.equal(model.noise(gens(1, 2)), randn_tensor((2, 4, 8, 8), generator=gens(1, 2)))


class Oracle:
    """Replaces the guided prediction: returns the prediction of the true (x0, eps) pair for the model's type."""

    def __init__(self, model, x0, eps):
        self.model, self.x0, self.eps = model, x0, eps

    def __call__(self, x_in, t, cond):
        kind = self.model.sampler.prediction
        a, s = self.model.sampler.alpha_sigma(t)
        return {"epsilon": self.eps, "flow": self.eps - self.x0, "v_prediction": a * self.eps - s * self.x0}[kind]


@pytest.mark.parametrize("which", ["unet", "unet-v", "sd-euler", "sd3"])
def test_renoise_then_predict_with_a_perfect_model_returns_x0_and_steps_stay_on_its_path(folders, which):
    model = ponder.load("image", folders[which])
    x0 = torch.rand(2, *model.shape) * 1.6 - 0.8  # inside DDIM's clip range
    eps = torch.randn(2, *model.shape, generator=gens(9)[0])
    model.guided_prediction = Oracle(model, x0, eps)
    times = model.timesteps(5)
    end = times[-1]
    for i in (0, 2, 4):
        x_t = model.renoise(x0, end, times[i], eps)
        assert torch.allclose(model.predict_x0(x_t, times[i], None), x0, atol=1e-4)
        # a deterministic step to ANY later time lands on the same forward-process path
        for j in range(i + 1, len(times)):
            want = model.renoise(x0, end, times[j], eps)
            assert torch.allclose(model.step(x_t, times[i], times[j], None), want, atol=1e-4)
    # renoising in two hops with the same noise law: variance adds up (checked on the scale factors)
    a1, s1 = model.sampler.alpha_sigma(times[3])
    a0, s0 = model.sampler.alpha_sigma(times[1])
    hop = model.renoise(torch.zeros_like(x0), times[3], times[1], eps)
    expected_std = (s0**2 - (a0 / a1) ** 2 * s1**2) ** 0.5
    assert torch.allclose(hop, expected_std * eps, atol=1e-6)
    with pytest.raises(ConfigError, match="noisier"):
        model.renoise(x0, times[0], times[3], eps)
    nfe = model.nfe
    assert torch.equal(model.predict_x0(x0, end, None), x0) and model.nfe == nfe  # the clean end costs nothing


def test_bad_prompt_size_steps_and_sampler_are_clear_errors(folders):
    model = ponder.load("image", folders["unet"])
    with pytest.raises(InputError, match="classes: zero, one, two"):
        model.condition("seven", 1)
    assert model.condition(2, 1).label == 2 and model.condition("ONE", 1).label == 1
    with pytest.raises(ConfigError, match="positive integer"):
        model.timesteps(0)
    with pytest.raises(ConfigError, match="multiple of 2"):
        ponder.load("image", folders["unet"], height=9)
    assert ponder.load("image", folders["unet"], height=12, width=16).noise(gens(0)).shape == (1, 1, 12, 16)
    with pytest.raises(ConfigError, match="only 8x8"):
        ponder.load("image", folders["dit"], height=16, width=16)
    with pytest.raises(ConfigError, match="does not fit"):
        ponder.load("image", folders["sd3"], sampler="ddim")
    with pytest.raises(ConfigError, match="no null class"):
        ponder.load("image", folders["unet"], guidance_scale=3.0)
    with pytest.raises(InputError, match="non-empty text prompt"):
        ponder.load("image", folders["sd"]).condition("  ", 1)


@pytest.mark.parametrize("which,family,sampler", [("unet", "unet", "ddim"), ("sd-euler", "sd", "euler"),
                                                  ("sdxl", "sdxl", "ddim"), ("dit", "dit", "ddim"),
                                                  ("sd3", "sd3", "flow")])
def test_each_pipeline_class_loads_as_a_family_object_with_frozen_weights(folders, which, family, sampler):
    from ponder.modalities.diffusion import Family

    model = ponder.load("image", folders[which])
    assert isinstance(model.family, Family) and model.family.name == family
    assert model.info()["family"] == family and model.info()["sampler"] == sampler
    assert not any(p.requires_grad for p in model.net.parameters())  # gradients flow only where a caller asks
    x = model.noise(gens(0)).requires_grad_(True)
    pixels = model.decode_tensor(model.predict_x0(x, model.timesteps(2)[0], model.condition(
        "1" if model.labels else "the cat", 1)))  # [1, C, H, W]
    assert pixels.shape[-2:] == (model.height, model.width)
    pixels.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_a_folder_that_is_no_image_model_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        ponder.load("image", tmp_path / "missing")
    (tmp_path / "model_index.json").write_text('{"_class_name": "KandinskyPipeline"}')
    with pytest.raises(ModelLoadError, match="supports"):
        ponder.load("image", tmp_path)
