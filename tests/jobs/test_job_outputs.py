"""Output files are chosen by what an output is (text, image, audio), never by modality name."""

from __future__ import annotations

import io
import json
import wave

import numpy as np
import pytest
import torch
from PIL import Image

from ponder.errors import InputError
from ponder.jobs.outputs import encoder_for, result_files, write_result
from ponder.search.core import Candidate, Compute, Result


class Audio:
    def __init__(self, waveform, sample_rate):
        self.waveform, self.sample_rate = waveform, sample_rate


def _result(outputs):
    candidates = [Candidate(output=o, score=float(i), seed=100 + i, meta={"index": i}) for i, o in enumerate(outputs)]
    return Result(best=candidates[-1], candidates=candidates, compute=Compute(model_calls=3, seconds=1.5),
                  config={"seed": 0})


def test_images_become_png_files_with_the_same_bytes_every_time():
    images = [Image.new("RGB", (8, 6), (10 * i, 20, 30)) for i in range(2)]
    files = result_files({"id": "img"}, _result(images))
    assert sorted(files) == ["best.png", "candidate_000.png", "candidate_001.png", "result.json"]
    assert Image.open(io.BytesIO(files["candidate_001.png"])).getpixel((0, 0)) == (10, 20, 30)
    assert files == result_files({"id": "img"}, _result(images))  # deterministic bytes
    doc = json.loads(files["result.json"])
    assert [c["file"] for c in doc["candidates"]] == ["candidate_000.png", "candidate_001.png"]
    assert doc["candidates"][0]["output"] is None and doc["best_file"] == "best.png"
    assert "seconds" not in doc["compute"] and doc["compute"]["model_calls"] == 3


def test_audio_becomes_16_bit_wav():
    tone = torch.sin(torch.linspace(0, 2 * np.pi * 5, 800))[None, :].repeat(2, 1)  # [2, 800]
    files = result_files({"id": "snd"}, _result([Audio(tone, 8000)]))
    with wave.open(io.BytesIO(files["candidate_000.wav"])) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (2, 2, 8000, 800)


def test_text_is_utf8_and_kept_in_result_json():
    files = result_files({"id": "t"}, _result(["héllo", "A: 42\n"]))
    assert files["candidate_000.txt"] == "héllo".encode() and files["best.txt"] == b"A: 42\n"
    assert json.loads(files["result.json"])["candidates"][0]["output"] == "héllo"


def test_an_unknown_kind_of_output_is_an_input_error_until_a_modality_declares_it(monkeypatch):
    from ponder.modalities import registry

    with pytest.raises(InputError, match="no file encoder for an output of type complex; known kinds: text, image"):
        encoder_for(1j)
    own = registry.OutputKind("complex", ".cplx", lambda o: isinstance(o, complex), lambda o: repr(o).encode())
    table = dict(registry.specs())
    table["toy"] = registry.ModalitySpec(name="toy", summary="complex numbers", load=lambda folder, **kw: None,
                                         output_kind=own)
    monkeypatch.setattr(registry, "specs", lambda: table)
    assert result_files({"id": "c"}, _result([2j]))["candidate_000.cplx"] == b"2j"


def test_write_result_writes_every_file_with_result_json_last(tmp_path, monkeypatch):
    from ponder.jobs import store

    written = []
    real = store.write_atomic
    monkeypatch.setattr(store, "write_atomic", lambda path, data: (written.append(path.name), real(path, data)))
    names = write_result(tmp_path / "out", {"id": "t"}, _result(["a", "b"]))
    assert written[-1] == "result.json" and sorted(written) == sorted(names)
    assert (tmp_path / "out" / "best.txt").read_text() == "b"
