"""Music controls (DITTO's feature losses): each prefers the signal it describes, its gradient is finite and
useful, `score` equals `score_tensor`, Weighted adds, and the NAME=VALUE form parses or names the bad value.

Signals are synthesised here: sine tones at known MIDI pitches, amplitude ramps in dB, sectioned forms.
The CLAP control runs on a tiny random ClapModel saved to a temp folder with a locally built tokenizer."""

from __future__ import annotations

import json
import math
import wave

import pytest
import torch
import torchaudio

from ponder.errors import ConfigError, InputError, ModelLoadError
from ponder.modalities.music.controls import (
    Inpaint,
    Intensity,
    Loop,
    Melody,
    Outpaint,
    Structure,
    TextAdherence,
    Weighted,
    frame_size,
    parse_control,
    parse_controls,
)
from ponder.search.core import Audio, DifferentiableVerifier

SR = 16000
SECONDS = 2.0
SAMPLES = int(SR * SECONDS)


def hz(midi: float) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


def tones(notes: list[int], seconds: float = SECONDS, amp: float = 0.5, sample_rate: int = SR) -> torch.Tensor:
    """Sine tones of `notes` (MIDI), one after another in equal slots over `seconds`. -> [T]"""
    per = int(seconds * sample_rate) // len(notes)
    t = torch.arange(per, dtype=torch.float64) / sample_rate
    return torch.cat([amp * torch.sin(2 * math.pi * hz(n) * t) for n in notes]).float()


def db_ramp(start_db: float, end_db: float, samples: int = SAMPLES) -> torch.Tensor:
    """A 440 Hz sine whose RMS moves linearly in dBFS from start_db to end_db. -> [T]"""
    rms_db = torch.linspace(start_db, end_db, samples, dtype=torch.float64)
    t = torch.arange(samples, dtype=torch.float64) / SR
    return (math.sqrt(2) * 10 ** (rms_db / 20) * torch.sin(2 * math.pi * 440 * t)).float()


def write_wav(path, wave_1d: torch.Tensor, sample_rate: int = SR, channels: int = 1):
    """A 16-bit PCM WAV of a [T] waveform (repeated on `channels`), with the standard library."""
    pcm = (wave_1d.clamp(-1, 1) * 32767).round().to(torch.int16)
    pcm = pcm[:, None].expand(-1, channels).contiguous()  # [T, C] interleaved
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.numpy().tobytes())
    return path


def noise(n: int = 2, samples: int = SAMPLES, seed: int = 0) -> torch.Tensor:
    return 0.2 * torch.randn(n, samples, generator=torch.Generator().manual_seed(seed))  # [N, T]


REFERENCE = tones([60, 64, 67, 72])  # [T] C E G C


def all_controls() -> dict:
    return {
        "intensity": Intensity([-30.0, -6.0, -20.0], SR),
        "melody": Melody([60, 64, 67, 72], SR),
        "melody-wave": Melody(REFERENCE, SR),
        "structure": Structure("AABA", SR),
        "structure-chroma": Structure("ABAB", SR, feature="chroma"),
        "inpaint": Inpaint(REFERENCE, 0.8, 1.3, SR),
        "outpaint": Outpaint(REFERENCE, 1.0, SR),
        "loop": Loop(0.5, SR),
    }


# ---- each control prefers the signal it describes -------------------------------------------------------


def test_intensity_prefers_the_ramp_matching_its_curve(tmp_path):
    curve = tmp_path / "curve.json"
    curve.write_text(json.dumps([-40.0, -25.0, -10.0]))  # 3 points, stretched over ~126 frames
    control = parse_control(f"intensity={curve}", SR)
    rising, falling = db_ramp(-40, -10), db_ramp(-10, -40)
    losses = control.loss(torch.stack([rising, falling]))  # [2]
    assert losses[0] < 2.0 < 100.0 < losses[1]  # squared dB: ~1 dB off vs ~15 dB off on average
    middle = control.curve(rising[None])[0, 60]  # a frame near the middle: target -25 dBFS
    assert abs(float(middle) + 25) < 1.5
    assert float(control.curve(torch.zeros(1, SAMPLES)).max()) == pytest.approx(-100.0)  # the floor


def test_intensity_l1_norm_is_mean_absolute_db_error():
    control = Intensity([-20.0], SR, smooth_s=0.0, norm="l1")
    steady = db_ramp(-26, -26)[None]  # a constant -26 dBFS tone: 6 dB under the target everywhere
    assert float(control.loss(steady)) == pytest.approx(6.0, abs=0.3)


def test_melody_chroma_recovers_the_notes_and_prefers_them():
    notes = [60, 64, 67, 71, 62, 69]
    control = Melody(notes, SR)
    matching, other = tones(notes), tones([n + 3 for n in notes])
    classes = control.chroma(matching[None])[0].argmax(0)  # [F]
    frames = classes.shape[0]
    slot = frames / len(notes)
    for k, note in enumerate(notes):  # frames well inside note k's slot
        inside = classes[int(k * slot) + 2 : int((k + 1) * slot) - 2]
        assert inside.numel() > 5 and bool((inside == note % 12).all()), (k, inside.tolist())
    losses = control.loss(torch.stack([matching, other]))
    assert losses[0] < 0.5 < 3.0 < losses[1]


def test_melody_from_a_wav_at_another_rate_and_stereo(tmp_path):
    notes = [62, 65, 69, 72]
    ref = write_wav(tmp_path / "ref.wav", tones(notes, sample_rate=22050), sample_rate=22050, channels=2)
    control = parse_control(f"melody={ref}", SR)  # read with soundfile, channels averaged, resampled
    assert isinstance(control, Melody) and control.notes is None
    losses = control.loss(torch.stack([tones(notes), tones([60, 64, 67, 71])]))
    assert losses[0] < 0.5 < 3.0 < losses[1]


def test_melody_reference_silence_carries_no_target():
    ref = torch.cat([torch.zeros(SAMPLES // 2), tones([67], seconds=SECONDS / 2)])  # silence, then G
    control = Melody(ref, SR)
    anything_then_g = torch.cat([tones([61], seconds=SECONDS / 2), tones([67], seconds=SECONDS / 2)])
    # the first half is free: a C# there costs (almost) nothing
    assert float(control.loss(anything_then_g[None])) < 0.5
    with pytest.raises(InputError, match="silent"):
        Melody(torch.zeros(SAMPLES), SR)


@pytest.mark.parametrize("feature", ["mel", "chroma"])
def test_structure_prefers_the_signal_with_its_form(feature):
    control = Structure("aaba", SR, feature=feature)  # letters are case-insensitive
    aaba, abcd = tones([60, 60, 67, 60]), tones([60, 64, 67, 71])
    sim = control.section_similarity(aaba[None])[0]  # [4, 4]
    assert float(sim[0, 1]) > 0.95 and float(sim[0, 3]) > 0.95 and float(sim[0, 2]) < 0.2
    losses = control.loss(torch.stack([aaba, abcd]))
    assert losses[0] < 0.01 and losses[1] > 0.2


def test_inpaint_free_inside_the_region_bound_outside():
    control = Inpaint(REFERENCE, 0.8, 1.3, SR)
    repainted = REFERENCE.clone()
    repainted[int(0.8 * SR) : int(1.3 * SR)] = noise(1, int(0.5 * SR))[0]  # anything inside the region
    changed_outside = REFERENCE.clone()
    changed_outside[: int(0.5 * SR)] = tones([70], seconds=0.5)
    losses = control.loss(torch.stack([repainted, changed_outside, tones([62, 65, 69, 71])]))
    assert losses[0] < 1e-4 and losses[1] > 0.05 and losses[2] > 0.05
    kept = control.kept_frames(SAMPLES // control.hop + 1)  # [126]: frames touching 0.8-1.3 s are free
    assert bool(kept[:47].all()) and not bool(kept[49:83].any()) and bool(kept[84:].all())


def test_outpaint_binds_only_the_kept_start():
    control = Outpaint(REFERENCE, 1.0, SR)
    continued = torch.cat([REFERENCE[:SR], tones([71], seconds=1.0)])  # same first second, new ending
    other_start = torch.cat([tones([61], seconds=1.0), REFERENCE[SR:]])
    losses = control.loss(torch.stack([continued, other_start]))
    assert losses[0] < 1e-6 and losses[1] > 0.05


def test_loop_prefers_a_periodic_signal():
    control = Loop(0.5, SR)
    t = torch.arange(SAMPLES) / SR
    periodic = 0.5 * torch.sin(2 * math.pi * 250 * t)  # 64-sample period divides T - overlap
    losses = control.loss(torch.stack([periodic, tones([60, 64, 67, 72])]))
    assert losses[0] < 1e-3 and losses[1] > 0.1


# ---- the verifier side: gradients, score == score_tensor, Weighted ------------------------------------------


@pytest.mark.parametrize("key", list(all_controls()))
def test_gradient_is_finite_nonzero_and_raises_the_score(key):
    control = all_controls()[key]
    assert isinstance(control, DifferentiableVerifier)
    x = (tones([61, 66, 68, 70])[None] + noise(1)).requires_grad_(True)  # [1, T]
    score = control.score_tensor("prompt", x)
    (grad,) = torch.autograd.grad(score.sum(), x)
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    step = 1e-3 * grad / grad.norm()  # a small step up the gradient raises the score
    assert float(control.score_tensor("prompt", x.detach() + step)) > float(score.detach())


@pytest.mark.parametrize("key", list(all_controls()))
def test_score_on_audio_equals_score_tensor(key):
    control = all_controls()[key]
    x = torch.stack([REFERENCE, tones([62, 62, 69, 62])]) + noise(2) * 0.1  # [2, T]
    expected = control.score_tensor(None, x)
    got = control.score(None, [Audio(w, SR) for w in x])
    torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=1e-5)
    stereo = control.score(None, [Audio(torch.stack([w, w]), SR) for w in x])  # [C, T] outputs: channels averaged
    torch.testing.assert_close(stereo, expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(control.score_tensor(None, torch.stack([x, x], 1)), expected)  # [N, C, T]


def test_score_resamples_audio_at_another_rate():
    control = Melody([60, 64, 67, 72], SR)
    at_8k = tones([60, 64, 67, 72], sample_rate=8000)
    expected = control.score_tensor(None, torchaudio.functional.resample(at_8k, 8000, SR)[None])
    torch.testing.assert_close(control.score(None, [Audio(at_8k, 8000)]), expected)
    with pytest.raises(InputError, match="Audio outputs"):
        control.score(None, ["not audio"])


def test_weighted_sums_weighted_scores_and_joins_names():
    melody, loop = Melody([60, 64, 67, 72], SR), Loop(0.5, SR)
    combined = Weighted([melody, loop], [2.0, 0.5])
    assert combined.name == "2*melody+0.5*loop" and isinstance(combined, DifferentiableVerifier)
    x = torch.stack([REFERENCE, tones([61, 63, 66, 70])])
    expected = 2.0 * melody.score_tensor(None, x) + 0.5 * loop.score_tensor(None, x)
    torch.testing.assert_close(combined.score_tensor(None, x), expected)
    torch.testing.assert_close(combined.score(None, [Audio(w, SR) for w in x]), expected)
    assert Weighted([melody, loop]).name == "melody+loop"
    with pytest.raises(ConfigError, match="one weight per control"):
        Weighted([melody, loop], [1.0])
    with pytest.raises(ConfigError, match="weight of loop"):
        Weighted([melody, loop], [1.0, -1.0])


def test_parse_controls_builds_a_weighted_sum_with_named_weights(tmp_path):
    ref = write_wav(tmp_path / "ref.wav", REFERENCE)
    combined = parse_controls(["melody=[60,64,67,72]", "loop=0.5", f"outpaint={ref}@1.0"], {"melody": 3.0}, SR)
    assert combined.name == "3*melody+loop+outpaint" and combined.weights == [3.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="weights name controls not given: intensity"):
        parse_controls(["loop=0.5"], {"intensity": 2.0}, SR)


# ---- the NAME=VALUE form ------------------------------------------------------------------------------------


def test_parse_control_reads_every_form(tmp_path):
    ref = write_wav(tmp_path / "ref.wav", REFERENCE)
    (tmp_path / "notes.json").write_text("[60, 62, 64]")
    intensity = parse_control("Intensity = [-30, -10]", SR)
    assert isinstance(intensity, Intensity) and intensity.target_db.tolist() == [-30.0, -10.0]
    notes = parse_control(f"melody={tmp_path / 'notes.json'}", SR)
    assert isinstance(notes, Melody) and notes.notes.tolist() == [0, 2, 4]
    structure = parse_control("structure=ABAB", SR)
    assert isinstance(structure, Structure) and structure.form == "ABAB"
    inpaint = parse_control(f"inpaint={ref}@1.0-1.5", SR)
    assert isinstance(inpaint, Inpaint) and (inpaint.start_s, inpaint.end_s) == (1.0, 1.5)
    torch.testing.assert_close(inpaint.reference, REFERENCE, atol=1e-4, rtol=0)  # 16-bit round trip
    outpaint = parse_control(f"outpaint={ref}@0.75", SR)
    assert isinstance(outpaint, Outpaint) and outpaint.keep == int(0.75 * SR)
    loop = parse_control("loop=0.25", SR)
    assert isinstance(loop, Loop) and loop.overlap == SR // 4
    assert frame_size(SR) == 1024 and frame_size(44100) == 2048 and frame_size(48000) == 2048


def _bad_specs(tmp_path):
    ref = write_wav(tmp_path / "ref.wav", REFERENCE)
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "words.json").write_text('["loud", "soft"]')
    (tmp_path / "not_audio.wav").write_text("this is text, not a WAV")
    write_wav(tmp_path / "empty.wav", torch.zeros(0))
    return [
        ("pitch=60", ConfigError, "unknown control 'pitch'; known: intensity, melody, structure"),
        ("melody", ConfigError, "NAME=VALUE"),
        ("loop=", ConfigError, "needs a value"),
        (f"intensity={tmp_path / 'missing.json'}", InputError, "is not a file"),
        (f"intensity={tmp_path / 'empty.json'}", InputError, "is empty"),
        (f"intensity={tmp_path / 'words.json'}", ConfigError, "list of numbers, got 'loud'"),
        ("intensity=[]", ConfigError, "non-empty list"),
        ("intensity=[-10, 3]", ConfigError, "dBFS"),
        ("intensity=[-10,", ConfigError, "not JSON"),
        ("melody=[60.5]", ConfigError, "list of integers, got 60.5"),
        ("melody=[60, 200]", ConfigError, "MIDI note numbers 0-127"),
        (f"melody={tmp_path / 'not_audio.wav'}", InputError, "is not audio"),
        (f"melody={tmp_path / 'nothing.wav'}", InputError, "is not a file"),
        (f"outpaint={tmp_path / 'empty.wav'}@1.0", InputError, "holds no samples"),
        ("structure=AAB1", ConfigError, "letters A-Z"),
        ("structure=A", ConfigError, "at least 2 sections"),
        (f"inpaint={ref}@2.0-1.0", ConfigError, "start < end"),
        (f"inpaint={ref}@1.0", ConfigError, "REFERENCE@START-END"),
        (f"inpaint={ref}@1.0-9.0", ConfigError, "ends beyond the reference"),
        (f"inpaint={ref}", ConfigError, "REFERENCE@TIMES"),
        (f"inpaint={ref}@a-b", ConfigError, "inpaint start must be a number of seconds, got 'a'"),
        (f"outpaint={ref}@5.0", ConfigError, "reference lasts 2.000 s"),
        ("loop=0", ConfigError, "loop overlap must be"),
        ("loop=-1", ConfigError, "loop overlap must be"),
        ("loop=0.01", ConfigError, "shorter than one analysis frame"),
        ("loop=half", ConfigError, "got 'half'"),
        ("text=a calm piano", ConfigError, "needs a CLAP: a local ClapModel folder"),
    ]


def test_parse_control_rejects_bad_input_naming_it(tmp_path):
    for spec, error, message in _bad_specs(tmp_path):
        with pytest.raises(error) as caught:
            parse_control(spec, SR)
        assert message in str(caught.value), (spec, str(caught.value))


def test_clip_dependent_limits_are_checked_when_scored():
    short = tones([60], seconds=0.8)[None]  # [1, 0.8 s]
    with pytest.raises(ConfigError, match="longer than half the clip"):
        Loop(0.5, SR).score_tensor(None, short)
    with pytest.raises(ConfigError, match="ends beyond the clip"):
        Inpaint(REFERENCE, 0.8, 1.3, SR).score_tensor(None, short)
    with pytest.raises(InputError, match="as long as its reference"):
        Inpaint(REFERENCE, 0.2, 0.5, SR).score_tensor(None, short)
    with pytest.raises(ConfigError, match="clip lasts only"):
        Outpaint(REFERENCE, 1.0, SR).score_tensor(None, short)
    with pytest.raises(ConfigError, match="has only"):
        Structure("ABCDEFGHIJKLMNOPQRSTUVWXYZ", SR).score_tensor(None, tones([60], seconds=0.1)[None])
    with pytest.raises(InputError, match=r"\[N, T\] or \[N, C, T\]"):
        Melody([60], SR).score_tensor(None, torch.zeros(SAMPLES))


# ---- text adherence through a tiny random CLAP ----------------------------------------------------------------


@pytest.fixture(scope="module")
def clap_folder(tmp_path_factory):
    """A tiny random ClapModel (16 mel bands, 1 s at 16 kHz) with a byte-level BPE tokenizer and a
    ClapFeatureExtractor, saved with save_pretrained (safetensors)."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "\u0120": 5}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab["\u0120" + letter] = len(vocab)
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[], model_max_length=32)
    text = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=37, max_position_embeddings=40, projection_dim=16)
    audio = dict(window_size=4, num_mel_bins=16, spec_size=64, patch_size=2, patch_stride=2, hidden_size=32,
                 depths=[1, 1], num_attention_heads=[2, 2], patch_embeds_hidden_size=16, projection_dim=16,
                 intermediate_size=37)
    torch.manual_seed(0)
    model = ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16))
    extractor = ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=1,
                                     fft_window_size=512, frequency_min=50, frequency_max=8000,
                                     truncation="rand_trunc", padding="repeatpad")
    folder = tmp_path_factory.mktemp("clap")
    model.save_pretrained(folder)
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_text_adherence_score_tensor_matches_the_processor_and_has_gradients(clap_folder):
    control = parse_control("text=a calm piano", 8000, clap=clap_folder)  # resampled 8 -> 16 kHz inside
    assert isinstance(control, TextAdherence) and isinstance(control, DifferentiableVerifier)
    long_clips = noise(2, 12000, seed=3)  # 1.5 s at 8 kHz: cropped to CLAP's first second
    short_clips = noise(2, 3000, seed=4)  # 0.375 s: repeat-padded
    for x in (long_clips, short_clips):
        x = x.clone().requires_grad_(True)
        score = control.score_tensor(None, x)  # [2] cosine similarities
        expected = control.score(None, [Audio(w.detach(), 8000) for w in x])  # through ClapFeatureExtractor
        torch.testing.assert_close(score.detach(), expected, atol=2e-4, rtol=0)
        (grad,) = torch.autograd.grad(score.sum(), x)
        assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    features = control.input_features(short_clips)  # [N, 1, frames, mels]
    reference = control.extractor([w.double().numpy() for w in
                                   torchaudio.functional.resample(short_clips, 8000, 16000)],
                                  sampling_rate=16000, return_tensors="pt")["input_features"]
    assert features.shape == (2, 1, 101, 16)
    torch.testing.assert_close(features, reference.float(), atol=2e-3, rtol=0)  # dB
    # another text, another score; the prompt is used when no text is fixed
    other = parse_control("text=rain", 8000, clap=clap_folder)
    assert not torch.allclose(other.score_tensor(None, short_clips), control.score_tensor(None, short_clips))
    free = TextAdherence(clap_folder, sample_rate=8000)
    torch.testing.assert_close(free.score_tensor("rain", short_clips), other.score_tensor(None, short_clips))
    with pytest.raises(InputError, match="give it one"):
        free.score_tensor("", short_clips)


def test_text_adherence_loads_once_for_several_specs_and_rejects_bad_folders(clap_folder, tmp_path):
    combined = parse_controls(["text=piano", "text=rain", "loop=0.1"], {"text": 0.5}, 16000, clap=clap_folder)
    assert combined.name == "0.5*text+0.5*text+loop"
    assert combined.controls[0].model is combined.controls[1].model
    with pytest.raises(ModelLoadError, match="not a ClapModel folder"):
        parse_control("text=piano", SR, clap=tmp_path)
    with pytest.raises(ConfigError, match="empty"):
        TextAdherence(clap_folder, sample_rate=SR, text="  ")
