"""Tiny random diffusers pipelines of real classes, saved with save_pretrained (offline, seeded)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

LABELS = ["zero", "one", "two"]


def class_unet_folder(root: Path, *, scheduler: str = "DDIMScheduler", prediction_type: str = "epsilon",
                      channels: int = 1, size: int = 8) -> Path:
    """A class-conditional UNet2DModel + scheduler in the layout `zoo:digits` uses."""
    import diffusers
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                       num_class_embeds=len(LABELS))
    sched = getattr(diffusers, scheduler)(num_train_timesteps=100, prediction_type=prediction_type)
    folder = root / "class-unet"
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
    pipe.save_pretrained(folder, safe_serialization=True)
    index = json.loads((folder / "model_index.json").read_text())
    index["id2label"] = {str(i): lab for i, lab in enumerate(LABELS)}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder
