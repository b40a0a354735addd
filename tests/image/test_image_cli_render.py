"""`ponder render` with image items: PNG candidates, the same bytes as the CLI's generate, and
image-specific job checks (steps, image verifiers) before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import image_tiny
import pytest
import yaml

from ponder.cli import main


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    return image_tiny.class_unet_folder(tmp_path_factory.mktemp("unet"))


def _job(tmp_path, unet_folder, **defaults) -> Path:
    job = {"defaults": {"modality": "image", "model": str(unet_folder), "strategy": "best-of-n", "n": 2,
                        "verifier": "aesthetic", "options": {"steps": 2}, **defaults},
           "matrix": {"prompt": ["one", "two"]}, "items": [{"id": "digit"}]}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_render_writes_png_candidates_equal_to_generate(capsys, unet_folder, tmp_path):
    out = tmp_path / "render"
    assert main(["render", str(_job(tmp_path, unet_folder)), "--out", str(out), "--no-progress", "--json"]) == 0
    capsys.readouterr()
    item = out / "digit.prompt1"  # prompts are named by their index
    assert sorted(p.name for p in item.iterdir()) == ["best.png", "candidate_000.png", "candidate_001.png",
                                                      "result.json"]
    result = json.loads((item / "result.json").read_text())
    assert result["compute"]["nfe"] == 4 and result["config"]["steps"] == 2
    gen = tmp_path / "gen"
    assert main(["generate", "image", "--model", str(unet_folder), "--prompt", "two", "--strategy", "best-of-n",
                 "--n", "2", "--verifier", "aesthetic", "--steps", "2", "--out", str(gen)]) == 0
    for name in ("best.png", "candidate_000.png", "candidate_001.png"):
        assert (item / name).read_bytes() == (gen / name).read_bytes()


@pytest.mark.parametrize("defaults, message", [
    ({"options": {"steps": 0}}, "steps must be a positive integer"),
    ({"verifier": "orm"}, "verifier 'orm' scores text, not images"),
    ({"options": {"steps": 2, "sampler": "nope"}}, "sampler 'nope' is not allowed"),
])
def test_bad_image_jobs_fail_before_anything_runs(capsys, unet_folder, tmp_path, defaults, message):
    out = tmp_path / "render"
    code = main(["render", str(_job(tmp_path, unet_folder, **defaults)), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and not out.exists()


def test_steps_on_a_token_model_fail_the_item_when_its_model_loads(capsys, unet_folder, tmp_path):
    # whether a model denoises is known once it loads: the item fails with one line, the rest is kept
    out = tmp_path / "render"
    job = _job(tmp_path, unet_folder, modality="text", model="zoo:arith", verifier="exact")
    assert main(["render", str(job), "--out", str(out), "--no-progress"]) == 1
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {row["status"] for row in manifest} == {"failed"}
    assert all("steps (denoising steps) applies to diffusion models" in row["error"] for row in manifest)
    assert not [p for p in out.iterdir() if p.is_dir()]  # no half-written item folder
    capsys.readouterr()
