"""The audio Denoiser over real diffusers pipelines: exact against StableAudioPipeline / AudioLDM2Pipeline run
with the same latents and a matching deterministic diffusers scheduler, the seconds rules, the sampler
maths with an oracle network, gradients, and clear errors."""

from __future__ import annotations

import json
import math
import shutil

import audio_tiny
import pytest
import torch

from ponder.errors import ConfigError, InputError, ModelLoadError
from ponder.modalities.music.denoiser import AudioDenoiser
from ponder.search.core import Audio, Denoiser


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio-pipes")
    return {"stable-audio": audio_tiny.stable_audio_folder(root),
            "stable-audio-karras": audio_tiny.stable_audio_folder(root, "karras", sigma_schedule="karras"),
            "audioldm2": audio_tiny.audioldm2_folder(root)}


def deterministic_edm_euler(**config):
    """diffusers' own deterministic EDM Euler (its scale_model_input, precondition_outputs and step), with
    the network's noise conditioning set to the cosine-DPM scheduler's atan(sigma) * 2 / pi: diffusers has
    no config switch for that, and its CosineDPMSolverMultistepScheduler is an SDE solver (noise every step)."""
    from diffusers import EDMEulerScheduler

    class CosineNoiseEDMEuler(EDMEulerScheduler):
        def precondition_noise(self, sigma):
            sigma = sigma if isinstance(sigma, torch.Tensor) else torch.tensor([sigma])
            return sigma.atan() / math.pi * 2

    settings = {k: audio_tiny.COSINE_SCHEDULER[k] for k in ("sigma_min", "sigma_max", "sigma_data", "sigma_schedule",
                                                           "prediction_type", "rho")}
    return CosineNoiseEDMEuler(**dict(settings, **config))


@pytest.mark.parametrize("which", ["stable-audio", "stable-audio-karras"])
def test_stable_audio_edm_euler_equals_the_pipeline_with_a_deterministic_edm_euler_scheduler(folders, which):
    model = AudioDenoiser.from_folder(folders[which], seconds=0.9)
    assert isinstance(model, Denoiser) and model.sampler.name == "edm-euler" and model.guidance_scale == 7.0
    x = model.noise(gens(0, 1))  # [2, 4, 16]: what latents= takes
    ours = model.sample(x, model.condition("a drum loop", 2), 4)
    assert model.nfe == 2 * 2 * 4  # classifier-free guidance: a pair per row and step
    schedule = which.removeprefix("stable-audio").lstrip("-") or "exponential"
    model.pipe.scheduler = deterministic_edm_euler(sigma_schedule=schedule)
    call = dict(prompt=["a drum loop"] * 2, num_inference_steps=4, audio_end_in_s=0.9)
    ref = model.pipe(**call, latents=x.clone(), output_type="latent").audios  # [2, 4, 16]
    assert (ours - ref).abs().max() < 1e-5 and ours.abs().mean() > 0.1  # not a degenerate comparison
    wave = model.pipe(**call, latents=x.clone()).audios  # [2, 2, 57]: stereo, cut to int(0.9 * 64)
    mine = model.decode_tensor(ours)
    assert mine.shape == wave.shape == (2, 2, 57)
    assert (mine - wave).abs().max() < 1e-5 and wave.abs().mean() > 0.01


def test_edm_euler_grid_is_the_cosine_dpm_schedulers_sigmas_and_atan_times(folders):
    # diffusers' CosineDPMSolverMultistepScheduler cannot be built without torchsde; its exponential and
    # Karras sigma formulas are the EDM schedulers' (k-diffusion's), so those are the reference here
    model = AudioDenoiser.from_folder(folders["stable-audio"])
    times = model.timesteps(5)
    edm = deterministic_edm_euler()
    edm.set_timesteps(5)
    assert torch.allclose(torch.tensor(times, dtype=torch.float64), edm.sigmas.double(), rtol=1e-6)
    assert times[0] == pytest.approx(500.0) and times[-2] == pytest.approx(0.3) and times[-1] == 0.0
    assert model.sampler.model_time(times[1]) == pytest.approx(math.atan(times[1]) * 2 / math.pi)
    karras = AudioDenoiser.from_folder(folders["stable-audio-karras"])
    assert karras.timesteps(5)[1] != pytest.approx(times[1])  # a different grid, not the default one


def test_stable_audio_seconds_set_the_end_conditioning_and_the_cut_not_the_latent_length(folders):
    full = AudioDenoiser.from_folder(folders["stable-audio"])
    short = AudioDenoiser.from_folder(folders["stable-audio"], seconds=0.5)
    assert full.seconds == 1.0 and full.shape == short.shape == (4, 16)  # 16 frames x hop 4 / 64 Hz
    x = full.noise(gens(2))
    cond_full, cond_short = full.condition("rain", 1), short.condition("rain", 1)
    assert cond_short.meta["seconds"] == 0.5
    t = full.timesteps(3)[1]
    assert not torch.allclose(full.predict_x0(x, t, cond_full), short.predict_x0(x, t, cond_short), atol=1e-4)
    assert full.decode_tensor(x).shape == (1, 2, 64) and short.decode_tensor(x).shape == (1, 2, 32)
    info = short.info()
    assert info["family"] == "stable-audio" and info["seconds"] == 0.5 and info["sample_rate"] == 64
    assert info["channels"] == 2 and json.loads(json.dumps(info)) == info


def test_stable_audio_guidance_uses_the_pipelines_null_condition(folders):
    model = AudioDenoiser.from_folder(folders["stable-audio"])
    cond = model.condition("a piano song", 1)
    assert cond.cond["encoder_hidden_states"].shape == (1, 8 + 2, 16)  # text tokens + start + end
    assert cond.cond["global_hidden_states"].shape == (1, 1, 32)
    assert torch.equal(cond.uncond["encoder_hidden_states"], torch.zeros(1, 10, 16))
    assert torch.equal(cond.uncond["global_hidden_states"], cond.cond["global_hidden_states"])
    unguided = AudioDenoiser.from_folder(folders["stable-audio"], guidance_scale=1.0)
    assert unguided.condition("a piano song", 1).uncond is None
    x = unguided.noise(gens(3))
    t = unguided.timesteps(2)[0]
    piano, bird = (unguided.predict_x0(x, t, unguided.condition(p, 1)) for p in ("a piano song", "a bird"))
    assert unguided.nfe == 2 and not torch.allclose(piano, bird, atol=1e-4)  # the text reaches the network


def test_audioldm2_ddim_equals_the_pipeline_latents_and_vocoder_waveform(folders):
    model = AudioDenoiser.from_folder(folders["audioldm2"], seconds=0.9)
    assert isinstance(model, Denoiser) and model.sampler.name == "ddim" and model.guidance_scale == 3.5
    # 0.9 s = 7.2 mel frames of 1/8 s -> 7, rounded up to the VAE factor 2 -> 8 frames: latent (4, 4, 16 / 2)
    assert model.shape == (4, 4, 8)
    x = model.noise(gens(4, 5))
    ours = model.sample(x, model.condition("a drum loop", 2), 3)
    assert model.nfe == 2 * 2 * 3
    call = dict(prompt=["a drum loop"] * 2, num_inference_steps=3, audio_length_in_s=0.9)
    ref = model.pipe(**call, latents=x.clone(), output_type="latent").audios
    assert (ours - ref).abs().max() < 1e-5 and ours.abs().mean() > 0.1
    wave = model.pipe(**call, latents=x.clone(), output_type="pt").audios  # [2, 57]: mono, int(0.9 * 64)
    mine = model.decode_tensor(ours)
    assert mine.shape == wave.shape == (2, 57)
    assert (mine - wave).abs().max() < 1e-5 and wave.abs().mean() > 0.01


def test_audioldm2_guidance_is_against_the_empty_prompt(folders):
    model = AudioDenoiser.from_folder(folders["audioldm2"])
    assert model.seconds == 2.0 and model.shape == (4, 8, 8)  # the UNet's sample_size: 8 latent frames
    slow, fast = model.condition("slow rain", 1), model.condition("fast rain", 1)
    assert slow.cond["encoder_hidden_states"].shape == (1, 4, 16)  # GPT-2's max_new_tokens states
    assert slow.cond["encoder_hidden_states_1"].shape == (1, 3, 16)  # T5: two words and </s>
    # the empty prompt, its T5 row padded to the prompt's length as the pipeline does: "</s>" then padding
    assert slow.uncond["encoder_attention_mask_1"].tolist() == [[1, 0, 0]]
    for key, value in slow.uncond.items():
        assert torch.equal(value, fast.uncond[key])  # the same null row for prompts of one length
    assert not torch.allclose(slow.cond["encoder_hidden_states"], fast.cond["encoder_hidden_states"], atol=1e-4)
    assert not torch.allclose(slow.cond["encoder_hidden_states"], slow.uncond["encoder_hidden_states"], atol=1e-4)


@pytest.mark.parametrize("which,shape", [("stable-audio", (2, 64)), ("audioldm2", (128,))])
def test_decode_gives_audio_and_gradients_reach_the_noise(folders, which, shape):
    from ponder.modalities.diffusion import Family

    model = AudioDenoiser.from_folder(folders[which])
    assert isinstance(model.family, Family) and model.info()["family"] == which
    assert not any(p.requires_grad for p in model.net.parameters())  # gradients flow only where a caller asks
    x = model.noise(gens(6)).requires_grad_(True)
    x0 = model.predict_x0(x, model.timesteps(2)[0], model.condition("a fast loop", 1))
    wave = model.decode_tensor(x0)  # [1, C, T] or [1, T]
    wave.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    (audio,) = model.decode(x0)
    assert isinstance(audio, Audio) and audio.sample_rate == 64 and tuple(audio.waveform.shape) == shape
    assert audio.waveform.abs().max() <= 1.0 and audio.seconds == model.seconds


def test_noise_is_what_the_pipelines_draw_from_a_list_of_generators(folders):
    from diffusers.utils.torch_utils import randn_tensor

    model = AudioDenoiser.from_folder(folders["stable-audio"])
    assert torch.equal(model.noise(gens(1, 2)), randn_tensor((2, 4, 16), generator=gens(1, 2)))


def test_edm_euler_renoise_then_predict_with_a_perfect_model_returns_x0_and_steps_stay_on_its_path(folders):
    model = AudioDenoiser.from_folder(folders["stable-audio"])
    x0 = torch.randn(2, *model.shape, generator=gens(7)[0])
    eps = torch.randn(2, *model.shape, generator=gens(8)[0])

    def oracle(x_in, t, cond):  # the v target of the true (x0, eps): v = a eps - s x0
        a, s = model.sampler.alpha_sigma(t)
        return a * eps - s * x0

    model.guided_prediction = oracle
    times = model.timesteps(5)
    for i in (0, 2, 4):
        x_t = model.renoise(x0, times[-1], times[i], eps)
        assert torch.allclose(model.predict_x0(x_t, times[i], None), x0, atol=1e-4)
        for j in range(i + 1, len(times)):
            assert torch.allclose(model.step(x_t, times[i], times[j], None),
                                  model.renoise(x0, times[-1], times[j], eps), atol=1e-4)
    with pytest.raises(ConfigError, match="noisier"):
        model.renoise(x0, times[0], times[3], eps)


def test_bad_folders_seconds_prompts_and_samplers_are_clear_errors(folders, tmp_path):
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        AudioDenoiser.from_folder(tmp_path / "missing")
    (tmp_path / "model_index.json").write_text('{"_class_name": "MusicLDMPipeline"}')
    supported = "AudioLDM2Pipeline, PonderMelDiffusion, StableAudioPipeline"
    with pytest.raises(ModelLoadError, match=f"MusicLDMPipeline.*supports {supported}"):
        AudioDenoiser.from_folder(tmp_path)
    for bad in (0, -1.0, float("nan"), "2"):
        with pytest.raises(ConfigError, match=r"seconds must be a number > 0 \(audio length\)"):
            AudioDenoiser.from_folder(folders["stable-audio"], seconds=bad)
    with pytest.raises(ConfigError, match="finite"):
        AudioDenoiser.from_folder(folders["audioldm2"], seconds=float("inf"))
    with pytest.raises(ConfigError, match="steps must be a positive integer"):
        AudioDenoiser.from_folder(folders["audioldm2"], steps=0)
    with pytest.raises(ConfigError, match=r"longer than this model supports \(at most 1 s\)"):
        AudioDenoiser.from_folder(folders["stable-audio"], seconds=1.5)
    with pytest.raises(ConfigError, match="shorter than the 0.25 s"):
        AudioDenoiser.from_folder(folders["audioldm2"], seconds=0.2)
    for which in ("stable-audio", "audioldm2"):
        with pytest.raises(InputError, match="non-empty text prompt"):
            AudioDenoiser.from_folder(folders[which]).condition("  ", 1)
    with pytest.raises(ConfigError, match="allowed: edm-euler"):
        AudioDenoiser.from_folder(folders["stable-audio"], sampler="ddim")
    with pytest.raises(ConfigError, match="allowed: ddim, euler, euler-karras"):
        AudioDenoiser.from_folder(folders["audioldm2"], sampler="edm-euler")
    assert AudioDenoiser.from_folder(folders["audioldm2"], sampler="euler").sampler.name == "euler"
    with pytest.raises(ConfigError, match="guidance_scale"):
        AudioDenoiser.from_folder(folders["stable-audio"], guidance_scale=0.5)


@pytest.mark.parametrize("change,match", [({"prediction_type": "epsilon"}, "prediction_type='epsilon'"),
                                          ({"sigma_data": 0.5}, "sigma_data=0.5"),
                                          ({"final_sigmas_type": "sigma_min"}, "final_sigmas_type")])
def test_stable_audio_scheduler_configs_the_sampler_cannot_follow_are_load_errors(folders, tmp_path, change, match):
    folder = shutil.copytree(folders["stable-audio"], tmp_path / "sa")
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **change)))
    with pytest.raises(ModelLoadError, match=match):
        AudioDenoiser.from_folder(folder)


def test_stable_audio_with_another_scheduler_class_is_a_load_error(folders, tmp_path):
    folder = shutil.copytree(folders["stable-audio"], tmp_path / "sa")
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "EDMDPMSolverMultistepScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="EDMDPMSolverMultistepScheduler scheduler is not supported"):
        AudioDenoiser.from_folder(folder)
