"""The demo's image tab over a Denoiser: generate returns describable images, re-render from a seed
reproduces the pixels, and the tab builds with image verifiers."""

from __future__ import annotations

import image_tiny
import pytest

from ponder.demos import app


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    return image_tiny.class_unet_folder(tmp_path_factory.mktemp("unet"))


def test_demo_session_generates_images_and_rerenders_them_from_the_seed(unet_folder):
    session = app.DemoSession()
    request = app.checked_request("image", str(unet_folder), "two", "best-of-n", "aesthetic", "plain", 3, 4, 1.0, 8,
                                  "", steps=2)
    payload = session.generate(request)
    result = payload.pop("result")
    assert [c["output"] for c in payload["candidates"]] == [app.describe_output(c.output) for c in result.candidates]
    assert payload["candidates"][0]["output"].startswith("<image 8x8 L sha256:")
    assert payload["compute"]["nfe"] == 3 * 2
    output, info = session.rerender(payload, 2)
    assert output.tobytes() == result.candidates[2].output.tobytes()
    assert "denoised alone" in info and "identical to the original: yes" in info


def test_image_tab_builds_with_image_verifiers():
    blocks = app.build_app(modalities=("image",))
    dropdowns = [b for b in blocks.blocks.values() if type(b).__name__ == "Dropdown"]
    verifier = next(d for d in dropdowns if d.label == "Verifier (or a folder)")
    assert verifier.value == "classifier" and "aesthetic" in [c[0] for c in verifier.choices]
