"""The tones generator: deterministic clips, a fixed held-out split, and ground truth the audio really carries."""

import math
import wave

import numpy as np
import pytest

from ponder.errors import ConfigError
from ponder.modalities.music import tones

# Sustained legato notes of one timbre at unit envelope: frame RMS is then the automation level itself.
SUSTAINED = tones.ToneConfig(timbres=("additive",), envelopes={"additive": tones.Envelope(0.0, 0.0, 1.0, 0.0)},
                             articulation=(1.0, 1.0))
FLAT = tones.ToneConfig(min_intensity_depth_db=0.0, max_intensity_depth_db=0.0)  # no automation


def _truth(clip):
    return (clip.notes, clip.key, clip.scale, clip.tempo, clip.tempo_word, clip.timbre, clip.register, clip.form,
            clip.intensity_db.tobytes(), clip.frame_rate, clip.sample_rate, clip.seed, clip.split)


def _dominant_midi(segment, sample_rate, near_hz=None):
    """MIDI pitch of the strongest spectral peak (Hann window, zero-padded FFT); only near `near_hz` if given."""
    n_fft = 1 << 16  # 0.24 Hz bins at 16 kHz
    spectrum = np.abs(np.fft.rfft(segment * np.hanning(len(segment)), n_fft))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    if near_hz is not None:  # from a fifth below to a fifth above: the octaves are outside
        spectrum = np.where((freqs > 0.7 * near_hz) & (freqs < 1.5 * near_hz), spectrum, 0.0)
    return 69.0 + 12.0 * math.log2(freqs[np.argmax(spectrum)] / 440.0)


def _mid_note(clip, onset, duration):
    """The middle half of a note, where the envelope has settled."""
    start = round((onset + 0.25 * duration) * clip.sample_rate)
    return clip.waveform[start:round((onset + 0.75 * duration) * clip.sample_rate)].astype(np.float64)


def test_same_seed_gives_identical_bytes_and_ground_truth():
    for seed in (0, 7, 123):
        a, b = tones.generate(seed), tones.generate(seed)
        assert a.waveform.tobytes() == b.waveform.tobytes()
        assert _truth(a) == _truth(b)


def test_different_seeds_give_different_clips():
    clips = [tones.generate(seed) for seed in range(8)]
    assert len({c.waveform.tobytes() for c in clips}) == 8
    assert len({tuple(c.notes) for c in clips}) == 8


def test_split_is_a_fixed_tenth_and_heldout_clips_are_only_heldout():
    splits = [tones.split_of(seed) for seed in range(1000)]
    assert 0.07 <= splits.count("heldout") / 1000 <= 0.13
    # The held-out set must never move between versions: pin its first members.
    heldout = [seed for seed, split in enumerate(splits) if split == "heldout"]
    assert heldout[:9] == [4, 10, 14, 17, 21, 26, 41, 45, 65]
    clips = list(tones.clips("heldout", 6))
    assert [c.seed for c in clips] == heldout[:6]
    assert all(c.split == "heldout" == tones.split_of(c.seed) for c in clips)
    assert tones.seeds("heldout", 3, start=heldout[2]) == heldout[2:5]
    train = tones.seeds("train", 60)
    assert not set(train) & set(heldout)
    assert train == [seed for seed, split in enumerate(splits) if split == "train"][:60]


def test_dominant_frequency_mid_note_is_the_notes_pitch_for_additive():
    cfg = tones.ToneConfig(timbres=("additive",))
    checked = 0
    for seed in range(8):
        clip = tones.generate(seed, cfg)
        for onset, duration, midi in clip.notes:
            assert abs(_dominant_midi(_mid_note(clip, onset, duration), clip.sample_rate) - midi) < 0.5
            checked += 1
    assert checked >= 64


def test_karplus_strong_strings_are_tuned_to_the_exact_pitch():
    # A string's second harmonic can outweigh its fundamental, so look between a fifth below and above.
    cfg = tones.ToneConfig(timbres=("pluck",))
    pitches = set()
    for seed in range(8):
        clip = tones.generate(seed, cfg)
        for onset, duration, midi in clip.notes:
            segment = _mid_note(clip, onset, duration)
            assert abs(_dominant_midi(segment, clip.sample_rate, tones.midi_to_hz(midi)) - midi) < 0.25
            pitches.add(midi)
    assert max(pitches) - min(pitches) >= 18  # low and high strings alike


def test_sections_with_the_same_letter_repeat_the_same_phrase():
    forms = set()
    for seed in range(16):
        clip = tones.generate(seed, FLAT)  # no automation: same letter, same samples
        sections = clip.waveform.reshape(len(clip.form), -1)  # [K, section samples]
        for i, a in enumerate(clip.form):
            for j, b in enumerate(clip.form[:i]):
                if a == b:
                    assert np.array_equal(sections[i], sections[j])
                else:
                    assert np.abs(sections[i] - sections[j]).max() > 0.05
        forms.add(clip.form)

        clip = tones.generate(seed)  # with automation: the notes still repeat, relative to the section
        phrases: dict[str, list] = {}
        for start, end, letter in clip.sections:
            phrase = [(round((on - start) * clip.sample_rate), round(dur * clip.sample_rate), midi)
                      for on, dur, midi in clip.notes if start <= on < end]
            assert all(on + dur <= round((end - start) * clip.sample_rate) for on, dur, _ in phrase)
            assert phrases.setdefault(letter, phrase) == phrase
        assert len({tuple(p) for p in phrases.values()}) == len(phrases)  # distinct letters, distinct phrases
    assert len(forms) >= 3


def test_frame_rms_in_db_tracks_intensity_db():
    for seed in range(4):
        clip = tones.generate(seed, SUSTAINED)
        hop = round(clip.sample_rate / clip.frame_rate)
        frames = clip.waveform.astype(np.float64).reshape(-1, hop)  # [F, hop]
        rms_db = 20.0 * np.log10(np.sqrt(np.mean(frames ** 2, axis=1)))  # [F] dBFS
        assert rms_db.shape == clip.intensity_db.shape == (round(clip.seconds * clip.frame_rate),)
        assert np.corrcoef(rms_db, clip.intensity_db)[0, 1] > 0.9
        # Oscillators are unit-RMS, so the curve is the level in dBFS itself, not just its shape.
        assert np.median(np.abs(rms_db - clip.intensity_db)) < 0.5
        assert np.ptp(clip.intensity_db) >= tones.ToneConfig().min_intensity_depth_db - 0.5
        assert np.allclose(tones.intensity_curve(clip, len(clip.intensity_db)), clip.intensity_db, atol=1e-4)


def test_ground_truth_agrees_with_the_audio_format_and_the_config():
    cfg = tones.ToneConfig()
    seen = {"timbre": set(), "register": set(), "tempo_word": set()}
    for seed in range(40):
        clip = tones.generate(seed)
        words = clip.tags.split(", ")
        assert len(words) == 3 and set(words) <= set(tones.TAG_VOCAB)
        assert words == [clip.timbre, clip.register, clip.tempo_word]
        assert clip.waveform.dtype == np.float32 and clip.waveform.shape == (round(cfg.seconds * cfg.sample_rate),)
        assert np.isfinite(clip.waveform).all() and np.abs(clip.waveform).max() <= 1.0
        assert np.abs(clip.waveform).max() == pytest.approx(10 ** (-cfg.headroom_db / 20), rel=1e-5)
        assert cfg.min_notes <= len(clip.notes) <= cfg.max_notes
        onsets = [on for on, _, _ in clip.notes]
        assert onsets == sorted(onsets) and all(on + dur <= clip.seconds for on, dur, _ in clip.notes)
        in_scale = {(tones.KEYS.index(clip.key) + i) % 12 for i in tones.SCALES[clip.scale]}
        assert all(cfg.min_midi <= midi <= cfg.max_midi and midi % 12 in in_scale for _, _, midi in clip.notes)
        mean = np.mean([midi for _, _, midi in clip.notes])
        assert clip.register == ("low" if mean < 60 else "high" if mean >= 72 else "mid")
        assert cfg.min_bpm <= clip.tempo <= cfg.max_bpm
        assert clip.tempo_word == ("slow" if clip.tempo < 100 else "fast" if clip.tempo >= 130 else "medium")
        sixteenth = 60.0 / (clip.tempo * tones.STEPS_PER_BEAT)  # s
        section = clip.sections[0][1]
        assert section / sixteenth == pytest.approx(round(section / sixteenth), abs=1e-9)
        assert all(abs(on / sixteenth - round(on / sixteenth)) < 0.01 for on in onsets)  # on the grid, to a sample
        for name, values in seen.items():
            values.add(getattr(clip, name))
    assert seen == {"timbre": set(tones.TIMBRES), "register": set(tones.REGISTERS),
                    "tempo_word": set(tones.TEMPO_WORDS)}


def test_faster_tempos_carry_more_notes():
    clips = [tones.generate(seed) for seed in range(60)]
    slow = np.mean([len(c.notes) for c in clips if c.tempo_word == "slow"])
    fast = np.mean([len(c.notes) for c in clips if c.tempo_word == "fast"])
    assert fast > slow + 4


def test_melody_and_chroma_targets_follow_the_notes():
    clip = tones.generate(3)
    frames = 400
    midi = tones.melody_midi(clip, frames)
    assert midi.shape == (frames,)
    for f, t in enumerate((np.arange(frames) + 0.5) * clip.seconds / frames):
        sounding = [m for on, dur, m in clip.notes if on <= t < on + dur]
        assert midi[f] == (sounding[0] if sounding else -1)
    assert (midi == -1).any() and (midi >= 0).mean() > 0.5  # articulation leaves gaps, notes fill most frames
    chroma = tones.chroma_target(clip, frames)
    assert chroma.shape == (frames, 12) and chroma.dtype == np.float32
    assert np.array_equal(chroma.sum(axis=1), (midi >= 0).astype(np.float32))
    voiced = midi >= 0
    assert np.array_equal(chroma[voiced].argmax(axis=1), midi[voiced] % 12)
    curve = tones.intensity_curve(clip, 20)
    assert curve.shape == (20,)
    assert np.all(curve <= clip.intensity_db.max() + 1e-6) and np.all(curve >= clip.intensity_db.min() - 1e-6)


def test_write_wav_round_trips_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    clip = tones.generate(5)
    path = tones.write_wav(tmp_path / "clip.wav", clip)
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, clip.sample_rate)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert pcm.shape == clip.waveform.shape
    assert np.abs(pcm / 32767.0 - clip.waveform).max() <= 0.5 / 32767.0 + 1e-7
    assert [p.name for p in tmp_path.iterdir()] == ["clip.wav"]

    def refuse(*args):
        raise OSError("disk full")

    monkeypatch.setattr(tones.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        tones.write_wav(tmp_path / "other.wav", clip)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.wav"]


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="scales"):
        tones.ToneConfig(scales=("blues",))
    with pytest.raises(ConfigError, match="form"):
        tones.ToneConfig(forms=("aaba",))
    with pytest.raises(ConfigError, match="max_notes"):
        tones.ToneConfig(min_notes=8, max_notes=4)
    with pytest.raises(ConfigError, match="sixteenths"):
        tones.ToneConfig(min_bpm=101.0, max_bpm=104.0)  # 6.7 to 6.9 sixteenths in a 1 s section
    with pytest.raises(ConfigError, match="envelopes"):
        tones.ToneConfig(envelopes={})
    with pytest.raises(ConfigError, match="split"):
        list(tones.clips("test", 1))
    with pytest.raises(ConfigError, match="seed"):
        tones.generate(-1)
