"""The shared diffusion core under gradients: d(loss on tensor-decoded x0) / d(x_T) through a whole
checkpointed sampling chain equals central finite differences, and checkpointing keeps only the
per-step latents for backward.

Memory is measured as what autograd itself holds for backward: every tensor saved for backward passes
through a `torch.autograd.graph.saved_tensors_hooks` pack hook, and we sum the bytes of the distinct
storages it sees (parameters excluded). Those storages stay alive until backward, so no address is
reused while counting. tracemalloc cannot see torch's CPU allocator, which is why it is not used.
Under non-reentrant checkpointing the step's internal saves go to checkpoint's own hooks, and only
what it keeps (the step's input latent) reaches ours: exactly the memory that outlives the forward.
"""

from __future__ import annotations

import pytest
import torch

from ponder.modalities.diffusion import Family, sample_chain
from ponder.modalities.image.denoiser import DiffusersDenoiser
from ponder.modalities.image.families import ClassUNet
from ponder.search.core import CountsNFE, DecodesTensor, Denoiser, Describes, HasDefaultSteps, Named


def tiny_unet_model(sampler: str, channels: int = 1, size: int = 8) -> DiffusersDenoiser:
    """A seeded float64 class-conditional UNet2DModel (8 / 16 channels) over a DDIM training schedule."""
    import diffusers
    from diffusers import DDIMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, num_class_embeds=3)
    unet = unet.double().requires_grad_(False)
    # clip_sample off: the x0 clamp is flat outside [-1, 1] and kinked at its edges
    scheduler = DDIMScheduler(num_train_timesteps=100, clip_sample=False)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    family = ClassUNet(pipe, index={"id2label": {"0": "zero", "1": "one", "2": "two"}}, model_name="tiny")
    return DiffusersDenoiser(pipe, family, name="tiny", sampler=sampler)


def start_noise(model) -> torch.Tensor:
    return model.noise([torch.Generator().manual_seed(s) for s in (0, 1)])  # [2, 1, 8, 8] float64


def test_tiny_model_has_every_capability_search_reads():
    model = tiny_unet_model("ddim")
    assert isinstance(model.family, Family)
    for protocol in (Denoiser, CountsNFE, HasDefaultSteps, Describes, DecodesTensor, Named):
        assert isinstance(model, protocol), protocol.__name__
    assert start_noise(model).dtype == torch.float64


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_noise_gradient_through_a_checkpointed_chain_equals_central_differences(sampler):
    model = tiny_unet_model(sampler)
    cond = model.condition("one", 2)
    x_T = start_noise(model)
    target = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    steps = 6

    def loss(x, checkpoint=True):
        pixels = model.decode_tensor(model.sample(x, cond, steps, checkpoint=checkpoint))  # [2, 1, 8, 8]
        return (pixels - target).square().sum()

    x = x_T.clone().requires_grad_(True)
    nfe = model.nfe
    loss(x).backward()
    assert model.nfe - nfe == 2 * 2 * steps  # 2 rows x steps, forward and the recomputation in backward
    grad = x.grad  # [2, 1, 8, 8]
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    plain = x_T.clone().requires_grad_(True)
    loss(plain, checkpoint=False).backward()
    assert torch.allclose(grad, plain.grad, rtol=1e-10, atol=0)  # checkpointing changes memory, not maths
    h = 1e-5
    with torch.no_grad():
        for k in range(3):
            d = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(100 + k), dtype=torch.float64)
            central = (loss(x_T + h * d) - loss(x_T - h * d)) / (2 * h)
            analytic = (grad * d).sum()
            print(f"{sampler} direction {k}: autograd {float(analytic):.10g}, central difference "
                  f"{float(central):.10g}, relative error {float(abs(analytic - central) / abs(central)):.2e}")
            assert float(abs(analytic - central)) <= 1e-4 * float(abs(central))


def saved_for_backward(model, steps: int, checkpoint: bool) -> tuple[int, int]:
    """(bytes autograd holds for backward after the chain's forward, bytes of one latent)."""
    params = {p.untyped_storage().data_ptr() for p in model.net.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    x_T = start_noise(model).requires_grad_(True)
    cond = model.condition("two", 2)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        x0 = sample_chain(model, x_T, cond, model.timesteps(steps), checkpoint=checkpoint)
    held = sum(storages.values())
    x0.square().sum().backward()  # the graph was real and complete
    assert torch.isfinite(x_T.grad).all()
    return held, x_T.numel() * x_T.element_size()


def test_checkpointing_keeps_activation_memory_flat_in_the_step_count():
    model = tiny_unet_model("ddim")
    plain, ckpt = {}, {}
    for steps in (4, 16, 64):
        plain[steps], latent = saved_for_backward(model, steps, checkpoint=False)
        ckpt[steps], _ = saved_for_backward(model, steps, checkpoint=True)
        print(f"{steps} steps: saved for backward without checkpointing {plain[steps]} B, with {ckpt[steps]} B "
              f"({steps} latents of {latent} B = {steps * latent} B)")
    # with checkpointing nothing but the per-step input latents outlives the forward: activations 0 at any length
    assert all(ckpt[k] == k * latent for k in ckpt)
    # without, every step's activations stay: linear growth, far above one latent per step
    per_step = [plain[k] / k for k in plain]
    assert max(per_step) / min(per_step) < 1.05 and plain[64] > 15 * plain[4]
    assert min(per_step) > 100 * latent


def test_chain_under_no_grad_builds_no_graph_and_matches_sample():
    model = tiny_unet_model("ddim")
    cond = model.condition("zero", 2)
    x_T = start_noise(model).requires_grad_(True)
    with torch.no_grad():
        x0 = sample_chain(model, x_T, cond, model.timesteps(3), checkpoint=True)
    assert not x0.requires_grad
    assert torch.equal(x0, model.sample(x_T.detach(), cond, 3))


def test_decode_tensor_is_unclamped_and_decode_rounds_it_to_images():
    model = tiny_unet_model("ddim")
    x0 = torch.full((2, *model.shape), 3.0, dtype=torch.float64)
    x0[1] = -0.5
    pixels = model.decode_tensor(x0)  # pixel model: the latents are the pixels
    assert torch.equal(pixels, x0)
    images = model.decode(x0.requires_grad_(True))  # decode detaches: outputs are never part of a graph
    assert images[0].getextrema() == (255, 255) and images[1].getextrema() == (64, 64)  # (-0.5 / 2 + 0.5) * 255
