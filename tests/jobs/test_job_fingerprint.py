"""Resume knows the weights: an item whose model (or draft, or verifier) weights changed under the
same name renders again; copying or touching the files does not; manifests written before
fingerprints existed keep resuming."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from jobfiles import read_output

from ponder.jobs import parse_job, plan, run_job
from ponder.jobs.fingerprint import folder_fingerprint, item_fingerprint


@pytest.fixture
def model_copy(tiny_model_folders, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_folders["llama"], folder)
    return folder


def _job(model):
    return parse_job({"defaults": {"modality": "text", "model": str(model), "options": {"max_new_tokens": 4}},
                      "items": [{"id": "a", "prompt": "Q: 1+2\n"}, {"id": "b", "prompt": "Q: 3*4\n", "seed": 2}]})


def _retrain(folder):
    """New weights of the same shapes under the same name (what retraining does)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = {name: tensor + 0.01 for name, tensor in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})
    assert torch.is_tensor(next(iter(tensors.values())))


def test_changed_weights_render_again_and_unchanged_ones_resume(model_copy, tmp_path):
    out = tmp_path / "out"
    assert run_job(_job(model_copy), out, threads=1, progress=False).done == 2
    latest, _ = read_output(out)
    assert latest["a"]["weights"] == item_fingerprint(_job(model_copy).items[0])
    os.utime(model_copy / "model.safetensors")  # touched, same bytes: still done
    again = run_job(_job(model_copy), out, threads=1, progress=False)
    assert (again.done, again.skipped) == (0, 2)
    _retrain(model_copy)
    todo, done = plan(_job(model_copy), out)
    assert [i.id for i in todo] == ["a", "b"] and done == []
    assert run_job(_job(model_copy), out, threads=1, progress=False).done == 2


def test_a_manifest_line_without_a_fingerprint_still_counts_as_done(model_copy, tmp_path):
    out = tmp_path / "out"
    run_job(_job(model_copy), out, threads=1, progress=False)
    manifest = out / "manifest.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    manifest.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "weights"}) + "\n" for e in lines))
    assert run_job(_job(model_copy), out, threads=1, progress=False).skipped == 2


def test_fingerprints_follow_contents_and_every_named_folder(model_copy, tmp_path, ponder_home):
    first = folder_fingerprint(model_copy)
    copy = tmp_path / "elsewhere"
    shutil.copytree(model_copy, copy)
    assert folder_fingerprint(copy) == first  # a copy has the same weights
    assert (ponder_home / "fingerprints.json").is_file()  # contents hashed once, remembered
    job = parse_job({"defaults": {"modality": "text", "model": str(model_copy)},
                     "items": [{"id": "a", "prompt": "Q: 1+2\n", "verifier": "exact"},
                               {"id": "b", "prompt": "Q: 1+2\n", "verifier": "prm"},
                               {"id": "c", "prompt": "Q: 1+2\n", "options": {"draft": str(copy)}}]})
    plain, with_prm, with_draft = (item_fingerprint(item) for item in job.items)
    assert plain and with_prm and with_draft and len({plain, with_prm, with_draft}) == 3
    _retrain(copy)
    assert item_fingerprint(job.items[2]) != with_draft and item_fingerprint(job.items[0]) == plain
    no_folder = parse_job({"defaults": {"modality": "text", "model": str(tmp_path / "missing")},
                           "items": [{"id": "a", "prompt": "Q: 1+2\n"}]})
    assert item_fingerprint(no_folder.items[0]) is None


def test_a_guides_corpus_and_a_rag_index_count_as_the_items_data(tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text('{"id": "a", "text": "Q: 1+2\\nA: 3"}\n')
    index = tmp_path / "index"
    index.mkdir()
    (index / "index.json").write_text("{}")
    job = parse_job({"defaults": {"modality": "text", "model": "zoo:arith"},
                     "items": [{"id": "g", "prompt": "Q: 1+2\n",
                                "options": {"guide": "knn", "guide_options": {"corpus": str(corpus)}}},
                               {"id": "r", "prompt": "Q: 1+2\n", "strategy": "rag",
                                "options": {"retriever": str(index)}},
                               {"id": "p", "prompt": "Q: 1+2\n"}]})
    guided, rag, plain = (item_fingerprint(item) for item in job.items)
    assert len({guided, rag, plain}) == 3
    corpus.write_text('{"id": "a", "text": "Q: 1+2\\nA: 4"}\n')  # new documents under the same path
    (index / "index.json").write_text('{"kind": "bm25"}')
    assert item_fingerprint(job.items[0]) != guided and item_fingerprint(job.items[1]) != rag
    assert item_fingerprint(job.items[2]) == plain
