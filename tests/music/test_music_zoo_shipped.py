"""The music zoo models that ship in the repo load through the user path and meet their cards on
held-out clips the recipes never trained on (fresh seeds of the held-out split)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ponder.modalities.music import tones

ZOO = Path(tones.__file__).parent / "zoo"


def _shipped(name: str) -> Path:
    folder = ZOO / name
    if not (folder / "card.json").is_file():
        pytest.fail(f"zoo:{name} ships with the repo; build it with `ponder zoo train {name}`")
    return folder


def _heldout(count: int) -> list:
    return list(tones.clips("heldout", count, start=100_000))  # seeds beyond those the cards evaluated


def test_the_shipped_judge_reads_the_tags_of_held_out_clips():
    from ponder.modalities.music.train_judge import TonesJudge

    folder = _shipped("tones-judge")
    card = json.loads((folder / "card.json").read_text())
    judge = TonesJudge.from_folder(folder)
    clips = _heldout(40)
    waves = torch.stack([torch.as_tensor(c.waveform) for c in clips])  # [40, T]
    probs = judge.tag_probs(waves, sample_rate=clips[0].sample_rate)
    groups = card["tag_groups"]
    timbre = [groups["timbre"][i] for i in probs["timbre"].argmax(-1).tolist()]
    register = [groups["register"][i] for i in probs["register"].argmax(-1).tolist()]
    metrics = card["metrics"]
    assert sum(t == c.timbre for t, c in zip(timbre, clips)) / 40 >= metrics["heldout_timbre_accuracy"] - 0.1
    assert sum(r == c.register for r, c in zip(register, clips)) / 40 >= metrics["heldout_register_accuracy"] - 0.15
    assert judge.embed(waves, sample_rate=clips[0].sample_rate).shape == (40, card["metrics"]["embedding_dim"])


def test_the_shipped_clap_prefers_each_clips_own_tags():
    from ponder.modalities.music.controls import TextAdherence

    folder = _shipped("tones-clap")
    clips = _heldout(12)
    control = TextAdherence(folder, sample_rate=clips[0].sample_rate)
    waves = torch.stack([torch.as_tensor(c.waveform) for c in clips])  # [12, T]
    wins = 0
    for clip, wave in zip(clips, waves):
        right = float(control.score_tensor(clip.tags, wave[None]))
        wrong_timbre = next(t for t in tones.TIMBRES if t != clip.timbre)
        wrong = float(control.score_tensor(f"{wrong_timbre}, {clip.register}, {clip.tempo_word}", wave[None]))
        wins += right > wrong
    assert wins >= 9  # the card: held-out timbre retrieval far above chance


def test_the_text_control_takes_a_zoo_clap_by_name():
    from ponder.errors import ZooError
    from ponder.modalities.music.controls import TextAdherence, parse_control

    _shipped("tones-clap")
    control = parse_control("text=pluck, high", 16000, clap="zoo:tones-clap")
    assert isinstance(control, TextAdherence) and control.text == "pluck, high"
    with pytest.raises(ZooError, match="not a zoo CLAP; the zoo's CLAP models: zoo:tones-clap"):
        parse_control("text=pluck", 16000, clap="zoo:tones-judge")
