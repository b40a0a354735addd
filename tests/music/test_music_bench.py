"""`ponder bench music --quick` end to end on the shipped zoo (two targets per control), and the bench's own
measurements: each reads the ground truth of real held-out clips and tells a clip from another."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ponder.bench import music_features as mf
from ponder.modalities.music import tones


@pytest.fixture(scope="module")
def clips():
    return list(tones.clips("heldout", 12, start=70_000))


def test_the_pitch_tracker_reads_the_notes_of_real_clips_and_not_of_others(clips):
    own = [mf.melody_accuracy(c.waveform, c.notes) for c in clips]
    other = [mf.melody_accuracy(c.waveform, clips[(i + 1) % len(clips)].notes) for i, c in enumerate(clips)]
    assert np.mean(own) > 0.9 and np.mean(other) < 0.3


def test_loudness_form_and_kept_region_measures_separate_a_clip_from_another(clips):
    a, b = clips[0], clips[1]
    assert mf.pearson(mf.loudness_db(a.waveform), mf.loudness_db(a.waveform)) == pytest.approx(1.0)
    assert mf.kept_distance(a.waveform, a.waveform, 1.0, 2.5) == 0.0
    assert mf.kept_distance(b.waveform, a.waveform, 1.0, 2.5) > 0.5
    contrasts = [mf.form_contrast(c.waveform, c.form) for c in clips]
    assert np.nanmean(contrasts) > 0.05  # repeated sections are more alike than contrasting ones
    shuffled = [mf.form_contrast(c.waveform, "ABAB" if c.form != "ABAB" else "AABB") for c in clips]
    assert np.nanmean(shuffled) < np.nanmean(contrasts)


@pytest.mark.filterwarnings("ignore")
def test_quick_bench_runs_every_method_on_every_control_and_states_its_goals(tmp_path):
    from ponder import bench
    from ponder.bench.music import CONTROLS

    report = bench.run("music", quick=True, plot_dir=tmp_path)
    rows = report["rows"]
    for control in CONTROLS:
        methods = {(r["method"], r["targets"]) for r in rows if r["control"] == control}
        assert {("plain", "all"), ("random", "all"), ("ditto-2", "all"), ("ditto", "ditto-subset")} <= methods
    for r in rows:
        if r["control"] in CONTROLS:
            assert r["n"] >= 1 and math.isfinite(r["loss"]) and r["seconds"] > 0
            assert r["rtf"] == pytest.approx(r["seconds"] / 4.0, abs=1e-3)
    ditto = [r for r in rows if r["method"] == "ditto"]
    assert all(r["backward"] == r["budget"] for r in ditto)  # one backward per Adam step per clip
    names = [g["name"] for g in report["goals"]]
    assert sum("to reach DITTO's final loss" in n for n in names) == len(CONTROLS)
    assert any("real-time factor" in n for n in names) and any("Frechet" in n for n in names)
    assert all(isinstance(g["met"], bool) for g in report["goals"])
    assert (tmp_path / "music.png").stat().st_size > 10_000
