"""A throwaway modality registered through the entry-point group drives every surface — the CLI's
entry function, `ponder.generate`, a render job and the demo — with no file of sdk/ or demos/ edited;
an unregistered modality name is one clear error everywhere."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ponder.errors import ConfigError

HERE = Path(__file__).parent
REPO = HERE.parent.parent
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """Install the toy package the way pip would leave it: a module plus a dist-info holding its entry
    point, on sys.path. Yields the module; the registry forgets it afterwards."""
    from ponder.modalities import registry

    site = tmp_path_factory.mktemp("site")
    shutil.copy(HERE / "toy_plugin_source.py", site / "ponder_toy_notes.py")
    info = site / "ponder_toy_notes-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ponder-toy-notes\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ponder.modalities]\ntoy-notes = ponder_toy_notes:SPEC\n"
                                           "toy-tones = ponder_toy_notes:TONES_SPEC\n")
    sys.path.insert(0, str(site))
    registry.cache_clear()
    import ponder_toy_notes

    yield ponder_toy_notes
    sys.path.remove(str(site))
    sys.modules.pop("ponder_toy_notes", None)
    registry.cache_clear()


@pytest.fixture(scope="module")
def model_folder(plugin, tmp_path_factory):
    return plugin.write_model(tmp_path_factory.mktemp("notes") / "model")


def test_the_plugin_is_discovered_beside_ponders_own(plugin):
    from ponder import api
    from ponder.modalities import registry

    assert {"text", "image", "toy-notes"} <= set(registry.names())
    assert "toy-notes" in api.MODALITIES and registry.get("toy-notes") is plugin.SPEC


def test_generate_from_python_scores_and_measures_diversity(plugin, model_folder):
    import ponder

    model = ponder.load("toy-notes", model_folder, bias=1.0)
    res = ponder.generate(model, "C E", strategy="best-of-n", n=6, verifier="count-g", seed=3, max_new_tokens=8)
    assert all(isinstance(c.output, plugin.Notes) for c in res.candidates)
    scores = [c.score for c in res.candidates]
    assert res.best.score == max(scores) and res.compute.verifier_calls == 6
    assert res.config["modality"] == "toy-notes"
    assert res.config["diversity"] == len({c.output.notes for c in res.candidates}) / 6
    again = ponder.generate(model, "C E", strategy="best-of-n", n=6, verifier="count-g", seed=3, max_new_tokens=8)
    assert [c.output for c in again.candidates] == [c.output for c in res.candidates]  # seeded


def test_options_of_one_modality_are_refused_by_another_by_name(plugin, model_folder):
    import ponder

    with pytest.raises(ConfigError, match="load option 'bias' belongs to toy-notes models, not text"):
        ponder.load("text", "zoo:arith", bias=1.0)
    with pytest.raises(ConfigError, match="load option 'sampler' belongs to image (and music )?models, not toy-notes"):
        ponder.load("toy-notes", model_folder, sampler="ddim")
    with pytest.raises(ConfigError, match="verifier 'orm' scores text, not notess|scores text"):
        ponder.load_verifier("toy-notes", "orm")


def test_cli_generate_writes_the_kinds_file_and_refuses_foreign_flags(plugin, model_folder, tmp_path, capsys):
    from ponder.cli import main

    out = tmp_path / "out"
    code = main(["generate", "toy-notes", "--model", str(model_folder), "--prompt", "C", "--strategy", "best-of-n",
                 "--n", "3", "--verifier", "count-g", "--max-new-tokens", "6", "--bias", "2", "--out", str(out),
                 "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["best"]["output"].startswith("<notes ")
    assert sorted(p.name for p in out.iterdir()) == ["best.notes", "candidate_000.notes", "candidate_001.notes",
                                                       "candidate_002.notes", "result.json"]
    doc = json.loads((out / "result.json").read_text())
    assert doc["item"]["load_options"] == {"bias": 2.0} and doc["best_file"] == "best.notes"
    best = (out / "best.notes").read_text().strip()
    assert payload["best"]["output"] == f"<notes {best}>"
    code = main(["generate", "toy-notes", "--model", str(model_folder), "--prompt", "C", "--size", "8"])
    assert code == 2 and "--size is an option of image models, not 'toy-notes'" in capsys.readouterr().err
    code = main(["generate", "text", "--model", "zoo:arith", "--prompt", "C", "--bias", "1"])
    assert code == 2 and "--bias is an option of toy-notes models, not 'text'" in capsys.readouterr().err
    help_text = subprocess.run([sys.executable, "-c", "from ponder.cli import build_parser; "
                                "build_parser().parse_args(['generate', '--help'])"],
                               capture_output=True, text=True, cwd=REPO).stdout
    assert "image options" in help_text and "count-g" not in help_text  # a fresh process without the plug-in


def test_a_render_job_renders_the_new_modality_and_resumes(plugin, model_folder, tmp_path):
    from ponder import jobs

    job_file = tmp_path / "job.yaml"
    job_file.write_text(json.dumps({
        "defaults": {"modality": "toy-notes", "model": str(model_folder), "strategy": "best-of-n", "n": 2,
                     "verifier": "count-g", "options": {"max_new_tokens": 5, "bias": 1.5}},
        "matrix": {"seed": [0, 1]},
        "items": [{"id": "tune", "prompt": "C E"}]}))
    job = jobs.load_job(job_file)
    summary = jobs.run_job(job, tmp_path / "out", progress=False)
    assert summary.failed == 0 and summary.done == 2, summary.failures
    for seed in (0, 1):
        folder = tmp_path / "out" / f"tune.seed-{seed}"
        assert (folder / "best.notes").is_file() and (folder / "candidate_001.notes").is_file()
        doc = json.loads((folder / "result.json").read_text())
        assert doc["item"]["options"]["bias"] == 1.5 and doc["config"]["modality"] == "toy-notes"
    again = jobs.run_job(job, tmp_path / "out", progress=False)
    assert again.done == 0 and again.skipped == 2  # done items are skipped
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"items": [{"modality": "toy-notes", "model": str(model_folder), "prompt": "C",
                                          "options": {"guidance_scale": 2.0}}]}))
    with pytest.raises(ConfigError, match="guidance_scale"):
        jobs.load_job(bad)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_demo_gets_a_tab_that_shows_the_new_kind(plugin, model_folder):
    from gradio_client import Client

    from ponder.demos.app import build_app

    app = build_app(modalities=("toy-notes",))
    app.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(app.local_url, verbose=False)
        token_visible = client.predict(str(model_folder), api_name="/model_toy-notes")
        assert "a sequence model" in token_visible[-1]
        best_text, best_image, best_audio, compute, table, gallery, players, plot, history = client.predict(
            str(model_folder), "C E", "best-of-n", "count-g", "plain", 4, 0, 1.0, 6, 0, "{bias: 1.0}",
            api_name="/generate_toy-notes")
        # the kind has no widget of its own: its one-line description, the image and audio players hidden
        assert best_text["visible"] and best_text["value"].startswith("<notes ")
        assert not best_image["visible"] and not best_audio["visible"] and not players["visible"]
        assert len(table["data"]) == 4 and all(row[3].startswith("<notes ") for row in table["data"])
        assert "verifier calls 4" in compute
        output, _, _, info = client.predict(1, api_name="/rerender_toy-notes")
        assert output == table["data"][1][3] and "identical to the original: yes" in info
    finally:
        app.close()


def test_an_unregistered_modality_is_one_clear_error_on_every_surface(tmp_path, capsys):
    import ponder
    from ponder import jobs
    from ponder.cli import main
    from ponder.demos.app import build_app

    with pytest.raises(ConfigError, match=r"unknown modality 'nope'; registered: .*text"):
        ponder.load("nope", "zoo:arith")
    assert main(["generate", "nope", "--model", "m", "--prompt", "p"]) == 2
    assert "unknown modality 'nope'; registered:" in capsys.readouterr().err
    job_file = tmp_path / "job.yaml"
    job_file.write_text(json.dumps({"items": [{"modality": "nope", "model": "m", "prompt": "p"}]}))
    with pytest.raises(ConfigError, match="unknown modality 'nope'"):
        jobs.load_job(job_file)
    with pytest.raises(ConfigError, match="unknown modality 'nope'"):
        build_app(modalities=("nope",))


def test_audio_outputs_become_wav_files_and_a_player_in_the_demo(plugin, model_folder, tmp_path, capsys):
    import wave

    from gradio_client import Client

    from ponder.cli import main
    from ponder.demos.app import build_app

    out = tmp_path / "tones"
    assert main(["generate", "toy-tones", "--model", str(model_folder), "--prompt", "C", "--strategy", "best-of-n",
                 "--n", "2", "--verifier", "loudness", "--max-new-tokens", "4", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "best.wav")
    with wave.open(str(out / "best.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, plugin.RATE)
        assert w.getnframes() % (plugin.RATE // 10) == 0 and w.getnframes() > 0
    app = build_app(modalities=("toy-tones",))
    app.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(app.local_url, verbose=False)
        best_text, best_image, best_audio, compute, table, gallery, players, plot, history = client.predict(
            str(model_folder), "C", "best-of-n", "loudness", "plain", 2, 0, 1.0, 4, 0, "",
            api_name="/generate_toy-tones")
        assert best_audio["visible"] and not best_text["visible"] and not best_image["visible"]
        with wave.open(best_audio["value"]) as w:  # the player's file: the best clip as PCM WAV
            assert w.getframerate() == plugin.RATE and w.getnframes() > 0
        assert all(row[3].startswith("<audio ") and f"{plugin.RATE} Hz" in row[3] for row in table["data"])
    finally:
        app.close()
