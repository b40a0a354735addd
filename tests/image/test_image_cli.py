"""`ponder generate image`: PNG files + result.json under --out, and bad input -> one stderr line,
exit 2, no file written."""

from __future__ import annotations

import json

import image_tiny
import pytest
from PIL import Image

from ponder.cli import main


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    return image_tiny.class_unet_folder(tmp_path_factory.mktemp("unet"))


def test_generate_image_writes_best_and_every_candidate_as_png(capsys, unet_folder, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = _run(capsys, "generate", "image", "--model", unet_folder, "--prompt", "two", "--strategy",
                             "best-of-n", "--n", "3", "--verifier", "aesthetic", "--steps", "2", "--seed", "1",
                             "--out", out)
    assert code == 0 and stdout.strip() == str(out / "best.png")
    assert "NFE 6, verifier calls 3" in err
    result = json.loads((out / "result.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["best.png", "candidate_000.png", "candidate_001.png",
                                                     "candidate_002.png", "result.json"]
    assert [c["file"] for c in result["candidates"]] == [f"candidate_{i:03d}.png" for i in range(3)]
    assert [c["output"] for c in result["candidates"]] == [None] * 3  # the files hold the images
    assert result["compute"]["nfe"] == 6 and result["config"]["steps"] == 2 and result["config"]["diversity"] > 0
    best = max(range(3), key=lambda i: (result["candidates"][i]["score"], -i))
    assert result["best"]["seed"] == result["candidates"][best]["seed"]
    best_png = Image.open(out / "best.png")
    assert best_png.size == (8, 8) and best_png.mode == "L"
    assert best_png.tobytes() == Image.open(out / f"candidate_{best:03d}.png").tobytes()


def test_generate_image_json_describes_images_without_out(capsys, unet_folder):
    code, stdout, _ = _run(capsys, "generate", "image", "--model", unet_folder, "--prompt", "1", "--n", "2",
                           "--steps", "1", "--size", "8x16", "--json")
    result = json.loads(stdout)
    assert code == 0 and all(c["output"].startswith("<image 16x8 L sha256:") for c in result["candidates"])


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "seven"], "not a class of"),
    (["--prompt", "two", "--steps", "0"], "--steps must be a positive integer"),
    (["--prompt", "two", "--size", "9"], "not a multiple of 2"),
    (["--prompt", "two", "--size", "big"], "--size wants HEIGHTxWIDTH"),
    (["--prompt", "two", "--strategy", "best-of-n", "--n", "2", "--verifier", "orm"], "scores text, not images"),
    (["--prompt", "two", "--decoder", "speculative"], "decodes tokens"),
    (["--prompt", "two", "--guidance-scale", "3"], "no null class"),
])
def test_bad_image_input_is_one_line_exit_2_and_no_files(capsys, unet_folder, tmp_path, argv, message):
    out = tmp_path / "run"
    code, _, err = _run(capsys, "generate", "image", "--model", unet_folder, *argv, "--out", out)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_image_flags_on_a_text_model_are_refused(capsys, tmp_path):
    code, _, err = _run(capsys, "generate", "text", "--model", tmp_path, "--prompt", "x", "--size", "8")
    assert code == 2 and "--size is an option of image models, not 'text'" in err  # before any model loads
    code, _, err = _run(capsys, "generate", "text", "--model", "zoo:arith", "--prompt", "x", "--steps", "3")
    assert code == 2 and "steps (denoising steps) applies to diffusion models; this model decodes tokens" in err


def test_readme_command_on_zoo_digits(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, _ = _run(capsys, "generate", "image", "--model", "zoo:digits", "--prompt", "7", "--strategy",
                      "noise-paths", "--n", "2", "--verifier", "classifier", "--steps", "4", "--out", out)
    result = json.loads((out / "result.json").read_text())
    assert code == 0 and (out / "best.png").is_file() and (out / "candidate_001.png").is_file()
    assert result["compute"]["nfe"] > 0 and result["compute"]["verifier_calls"] > 0
    assert result["best"]["score"] == max(c["score"] for c in result["candidates"])
    assert Image.open(out / "best.png").size == (16, 16)
    code, _, err = _run(capsys, "generate", "image", "--model", "zoo:digits", "--prompt", "seven", "--out", out / "x")
    assert code == 2 and "classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in err and not (out / "x").exists()
