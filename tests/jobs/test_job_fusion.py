"""Fused rendering (continuous batching across items): the same outputs as item by item, on text and
image items, with each item's compute its own share and a failing item failing alone."""

from __future__ import annotations

from jobfiles import assert_same_outputs, check_files_match_manifest, read_output

from ponder.cli import main
from ponder.jobs import parse_job, run_job

CODE_SHORT = "import os\n\ndef main(argv):\n    parser = "
CODE_LONG = ('"""Utilities for reading configuration files."""\n\nimport os\nimport re\n\n\nclass Config:\n'
             "    def __init__(self, path):\n        self.path = path\n        self.values = {}\n\n"
             "    def read(self):\n        with open(self.path) as f:\n            for line in f:\n")
MIXED = {
    "name": "mixed",
    "defaults": {"modality": "text", "model": "zoo:arith", "options": {"max_new_tokens": 32, "temperature": 0.8}},
    "matrix": {"seed": [0, 1]},
    "items": [
        {"id": "bon", "prompt": "Q: 58+36-7*2\n", "strategy": "best-of-n", "n": 3, "verifier": "exact"},
        {"id": "vote", "prompt": "Q: 9*9-40+6\n", "strategy": "self-consistency", "n": 3},
        {"id": "greedy", "prompt": "Q: 12+7*3\n", "options": {"max_new_tokens": 32, "temperature": 0.0}},
        {"id": "beam", "prompt": "Q: 3*4-5\n", "strategy": "beam", "n": 4, "verifier": "prm",
         "options": {"max_new_tokens": 32, "temperature": 0.8, "beam_width": 2}},
        {"id": "long", "prompt": "Q: " + "1+" * 200 + "1\n"},  # the model rejects it: it fails alone
        {"id": "code", "model": "zoo:pycode", "n": 2, "matrix": {"prompt": [CODE_SHORT, CODE_LONG]},
         "options": {"max_new_tokens": 16, "temperature": 0.8}},
        {"id": "img", "modality": "image", "model": "zoo:digits", "prompt": "7", "strategy": "best-of-n", "n": 2,
         "verifier": "zoo:digits-classifier", "options": {"steps": 4}},
        {"id": "imgar", "modality": "image", "model": "zoo:digits-ar", "prompt": "3", "n": 2},
    ],
}


def test_a_fused_job_writes_what_item_by_item_writes(tmp_path):
    job = parse_job(MIXED)
    fused = run_job(job, tmp_path / "fused", threads=1, progress=False)
    alone = run_job(job, tmp_path / "alone", threads=1, progress=False, fuse=False)
    unbucketed = run_job(job, tmp_path / "unbucketed", threads=1, progress=False, buckets=False)
    for summary in (fused, alone, unbucketed):
        assert (summary.done, summary.failed) == (len(job) - 2, 2)
        assert {f["id"] for f in summary.failures} == {"long.seed-0", "long.seed-1"}
    assert_same_outputs(tmp_path / "fused", tmp_path / "alone")
    assert_same_outputs(tmp_path / "unbucketed", tmp_path / "alone")
    assert fused.compute == {**alone.compute, "seconds": fused.compute["seconds"]}  # the same work, counted the same
    assert alone.fusion is None
    stats = fused.fusion
    # best-of-n, self-consistency, the greedy sample and the code and AR-image samples joined batches;
    # beam keeps its own forked cache and the diffusion items have none: they ran in their turn
    assert stats.requests == 2 * 3 + 4 + 2 and stats.alone == 0 and stats.rows_per_step > 2
    assert stats.shared_prefills > 0
    # length buckets: the short code prompt is never padded to the long one's length
    assert stats.bucket_waits > 0 and stats.padding_fraction < unbucketed.fusion.padding_fraction
    entries, lines = read_output(tmp_path / "fused")
    assert len(lines) == len(job)
    for entry in entries.values():
        if entry["status"] == "done":
            check_files_match_manifest(tmp_path / "fused", entry)
    # each item's seconds are its own share of the fused work: together they fit in the job's wall time
    assert 0 < sum(e["compute"].get("seconds", 0) for e in entries.values()) <= fused.seconds


def test_a_fused_job_resumes_and_the_cli_reports_the_batches(tmp_path, write_job, capsys):
    job = {**MIXED, "items": MIXED["items"][:3]}
    path = write_job(job)
    assert main(["render", str(path), "--out", str(tmp_path / "out"), "--no-progress", "--max-rows", "4"]) == 0
    out = capsys.readouterr().out
    assert "fused: 6 decode requests in" in out and "rows a step" in out
    assert main(["render", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "0 done, 6 skipped, 0 failed of 6" in capsys.readouterr().out
    assert main(["render", str(path), "--out", str(tmp_path / "alone"), "--no-progress", "--no-fuse"]) == 0
    assert "fused:" not in capsys.readouterr().out
    assert_same_outputs(tmp_path / "out", tmp_path / "alone")


def test_the_output_comparison_sees_a_changed_file_and_a_float_beyond_the_tolerance(tmp_path):
    import json
    import shutil

    from ponder.jobs.compare import compare_outputs

    job = parse_job({**MIXED, "items": MIXED["items"][2:3]})
    run_job(job, tmp_path / "a", threads=1, progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert compare_outputs(tmp_path / "a", tmp_path / "b").same
    result = tmp_path / "b" / "greedy.seed-0" / "result.json"
    data = json.loads(result.read_text())
    data["candidates"][0]["meta"]["logprob"] += 5e-5  # within the tolerance
    result.write_text(json.dumps(data))
    near = compare_outputs(tmp_path / "a", tmp_path / "b")
    assert near.same and 4e-5 < near.max_float_gap < 6e-5
    data["candidates"][0]["meta"]["logprob"] += 1e-3
    result.write_text(json.dumps(data))
    assert compare_outputs(tmp_path / "a", tmp_path / "b").differing == [
        "greedy.seed-0/result.json.candidates[0].meta.logprob"]
    (tmp_path / "b" / "greedy.seed-1" / "best.txt").write_text("changed")
    far = compare_outputs(tmp_path / "a", tmp_path / "b")
    assert "greedy.seed-1/best.txt" in far.differing and not far.same
