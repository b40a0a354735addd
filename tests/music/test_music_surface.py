"""The music modality through every surface: `ponder.load("music", …)` on tiny StableAudio / AudioLDM2
folders, controls as verifiers and as DITTO's objective, WAV files from the CLI and render jobs, the
demo's audio player, and one clear error for a control given to another modality or given twice."""

from __future__ import annotations

import json
import socket
import wave

import audio_tiny
import pytest

import ponder
from ponder.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:::gradio.queueing")
RISING = "intensity=[-40,-10]"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("music")
    return {"stable-audio": audio_tiny.stable_audio_folder(root), "audioldm2": audio_tiny.audioldm2_folder(root)}


@pytest.mark.parametrize("which", ["stable-audio", "audioldm2"])
def test_best_of_n_with_a_control_as_the_verifier(folders, which):
    model = ponder.load("music", folders[which])
    res = ponder.generate(model, "soft piano", strategy="best-of-n", n=3, verifier=RISING, steps=2, seed=1)
    from ponder.search.core import Audio

    assert all(isinstance(c.output, Audio) for c in res.candidates)
    assert res.best.score == max(c.score for c in res.candidates) and res.compute.verifier_calls == 3
    assert res.config["modality"] == "music" and res.config["diversity"] >= 0
    assert res.best.output.sample_rate == model.sample_rate


def test_ditto_optimises_the_weighted_controls(folders):
    model = ponder.load("music", folders["stable-audio"])
    # the tiny pipelines run at 64 Hz: too few samples for the mel controls, so the intensity control it is
    res = ponder.generate(model, "soft piano", strategy="ditto", n=2, steps=2, seed=0, opt_steps=3, lr=0.1,
                          controls=[RISING], control_weights={"intensity": 2.0})
    assert res.config["verifier"] == "2*intensity"
    for cand in res.candidates:
        assert cand.score >= cand.meta["score_before"] and len(cand.meta["score_history"]) == 4
    assert res.compute.backward_passes == 2 * 3


def test_cli_writes_wav_candidates_and_refuses_misplaced_controls(folders, tmp_path, capsys):
    from ponder.cli import main

    out = tmp_path / "out"
    assert main(["generate", "music", "--model", str(folders["audioldm2"]), "--prompt", "rain", "--strategy",
                 "ditto-2", "--n", "2", "--steps", "2", "--control", RISING, "--opt-steps", "2",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "best.wav")
    with wave.open(str(out / "best.wav")) as w:
        assert w.getsampwidth() == 2 and w.getnframes() > 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["item"]["options"]["controls"] == [RISING] and doc["config"]["strategy"] == "ditto-2"
    assert all({"score_before", "score_after", "surrogate_before"} <= set(c["meta"]) for c in doc["candidates"])
    compute = doc["compute"]  # --out keeps the timing: seconds and seconds of compute per second of audio
    with wave.open(str(out / "candidate_000.wav")) as w:
        audio_seconds = w.getnframes() / w.getframerate() * len(doc["candidates"])
    assert compute["backward_passes"] > 0 and compute["nfe"] > 0 and compute["seconds"] > 0
    assert compute["real_time_factor"] == pytest.approx(compute["seconds"] / audio_seconds, rel=1e-3, abs=1e-4)
    cases = [
        (["generate", "text", "--model", "zoo:arith", "--prompt", "x", "--control", RISING],
         "--control is an option of music models, not 'text'"),
        (["generate", "music", "--model", str(folders["audioldm2"]), "--prompt", "x", "--control", RISING,
          "--verifier", RISING], "give the objective once"),
        (["generate", "music", "--model", str(folders["audioldm2"]), "--prompt", "x", "--control", "tempo=fast"],
         "unknown control 'tempo'"),
        (["generate", "music", "--model", str(folders["audioldm2"]), "--prompt", "x", "--verifier", "loudness"],
         "unknown music verifier 'loudness'"),
        (["generate", "music", "--model", str(folders["audioldm2"]), "--prompt", "x", "--seconds", "-1"],
         "seconds must be a number > 0"),
    ]
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "notaudio.wav").write_text("this is not audio")
    import numpy as np

    from ponder.modalities.registry import AUDIO
    from ponder.search.core import Audio

    ref = tmp_path / "ref.wav"  # 1 s at 22.05 kHz: another rate than the model's (resampled on read)
    ref.write_bytes(AUDIO.encode(Audio(np.sin(np.arange(22050) * 0.05).astype(np.float32) * 0.5, 22050)))
    music = ["generate", "music", "--model", "zoo:tones", "--prompt", "saw", "--seconds", "1"]  # 16 kHz
    cases += [
        ([*music, "--control", f"intensity={tmp_path / 'empty.json'}"],
         "intensity target must be a non-empty list of numbers, got []"),
        ([*music, "--control", f"intensity={tmp_path / 'missing.json'}"], "missing.json' is not a file"),
        ([*music, "--control", f"melody={tmp_path / 'notaudio.wav'}"],
         "notaudio.wav' is not audio soundfile can read"),
        ([*music, "--control", f"inpaint={ref}@0.5-3.0"],
         "inpaint region 0.5-3.0 s ends beyond the reference (1.000 s)"),
        ([*music, "--control", RISING, "--strategy", "ditto", "--opt-steps", "0"],
         "opt_steps must be a positive integer"),
        ([*music, "--control", RISING, "--strategy", "ditto", "--lr", "0"], "lr must be a number > 0"),
        ([*music, "--control", RISING, "--steps", "0"], "--steps must be a positive integer"),
    ]
    for argv, message in cases:
        bad = tmp_path / "bad"
        code = main([*argv, "--out", str(bad)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
        assert not bad.exists()


def test_a_render_job_writes_music_items_as_wav(folders, tmp_path):
    from ponder import jobs

    job_file = tmp_path / "job.yaml"
    job_file.write_text(json.dumps({
        "defaults": {"modality": "music", "model": str(folders["audioldm2"]), "strategy": "best-of-n", "n": 2,
                     "verifier": RISING, "options": {"steps": 2, "seconds": 2.0}},
        "items": [{"id": "calm", "prompt": "calm"}]}))
    summary = jobs.run_job(jobs.load_job(job_file), tmp_path / "out", progress=False)
    assert summary.done == 1 and summary.failed == 0, summary.failures
    with wave.open(str(tmp_path / "out" / "calm" / "best.wav")) as w:
        assert w.getnframes() == int(2.0 * w.getframerate())  # the load option reached the model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_demos_music_tab_plays_the_best_clip(folders):
    from gradio_client import Client

    from ponder.demos.app import build_app

    app = build_app(modalities=("music",))
    app.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(app.local_url, verbose=False)
        decoder, temperature, max_new, steps, info = client.predict(str(folders["audioldm2"]), api_name="/model_music")
        assert steps["visible"] and not temperature["visible"] and "diffusion model" in info
        best_text, best_image, best_audio, compute, table, gallery, players, plot, history = client.predict(
            str(folders["audioldm2"]), "rain", "best-of-n", RISING, "plain", 2, 0, 1.0, 8, 2, "",
            api_name="/generate_music")
        assert best_audio["visible"] and not best_text["visible"] and not gallery["visible"]
        # a player for every candidate, each with its seed and score, inline WAV
        assert players["visible"] and players["value"].count("<audio controls") == 2
        assert players["value"].count("data:audio/wav;base64,UklGR") == 2  # "RIFF"
        for row in table["data"]:
            assert f"#{row[0]}, seed {row[1]}, score {row[2]:.4f}" in players["value"]
        with wave.open(best_audio["value"]) as w:
            assert w.getnframes() > 0
        assert all(row[3].startswith("<audio ") for row in table["data"])
        output, image, audio, info = client.predict(1, api_name="/rerender_music")
        assert audio["visible"] and not image["visible"] and output == table["data"][1][3]
        assert "identical to the original: yes" in info
        # DITTO: every candidate's control loss per Adam step, and its score before and after
        *_, players, plot, history = client.predict(
            str(folders["audioldm2"]), "rain", "ditto", RISING, "plain", 2, 0, 1.0, 8, 2, "{opt_steps: 2, lr: 0.05}",
            api_name="/generate_music")
        assert history["visible"] and len(history["value"]["data"]) == 2 * 3
        columns, rows = history["value"]["columns"], history["value"]["data"]
        assert all(r[columns.index("loss")] == -r[columns.index("score")] for r in rows)
        plot_y = next(b.y for b in app.blocks.values() if getattr(b, "elem_id", None) == "history-music")
        assert plot_y == "loss"  # the music tab plots the control loss falling
        assert "before " in players["value"] and "after " in players["value"]
    finally:
        app.close()


def test_control_options_are_checked_before_any_model_loads():
    from ponder.request import Request

    with pytest.raises(ConfigError, match="controls are NAME=VALUE strings"):
        Request(modality="music", model="/no/such/folder", prompt="x", options={"controls": [3]}).validate()
    with pytest.raises(ConfigError, match="control weight 'loop' must be a number"):
        Request(modality="music", model="/no/such/folder", prompt="x",
                options={"controls": ["loop=0.2"], "control_weights": {"loop": "heavy"}}).validate()


@pytest.mark.parametrize("which", ["stable-audio", "audioldm2"])
def test_a_candidates_waveform_does_not_depend_on_its_batch(folders, which):
    import torch

    from ponder.search.scaling import sample

    model = ponder.load("music", folders[which])
    batch = sample(model, "rain", None, n=3, seed=5, steps=2)
    alone = sample(model, "rain", None, n=3, seed=5, steps=2, indices=[1])
    assert torch.equal(torch.as_tensor(batch.candidates[1].output.waveform),
                       torch.as_tensor(alone.candidates[0].output.waveform))
