"""SIGKILL a 200-item zoo job at three random points, resume, and find every item exactly once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobfiles import check_files_match_manifest, temp_files

from ponder.jobs import load_job
from ponder.jobs.worker import Worker

PROMPTS = ["Q: 58+36-7*2\n", "Q: 12+7*3\n", "Q: 9*9-40\n", "Q: 71-8*6+5\n"]
JOB = {
    "name": "kill-test",
    "defaults": {"modality": "text", "model": "zoo:arith", "options": {"max_new_tokens": 6}},
    "matrix": {"seed": list(range(50))},
    "items": [{"id": f"p{k}", "prompt": p} for k, p in enumerate(PROMPTS)],
}


def _render(job_path: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ponder.cli", "render", str(job_path), "--out", str(out), "--threads", "1",
           "--no-progress", "--json"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines(out: Path) -> int:
    try:
        return (out / "manifest.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_sigkill_three_times_then_resume_gives_every_item_once(tmp_path, write_job):
    job_path = write_job(JOB)
    job = load_job(job_path)
    assert len(job) == 200
    out = tmp_path / "out"
    rng = random.Random(6)
    kill_at = sorted(rng.sample(range(15, 185), 3))
    for target in kill_at:
        proc = _render(job_path, out)
        deadline = time.monotonic() + 240
        while _lines(out) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.2))  # land anywhere: mid-generate, mid-write, mid-manifest line
        assert proc.poll() is None, f"the job ended before the kill at {target}: {proc.communicate()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert _lines(out) < len(job)

    proc = _render(job_path, out)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["failed"] == 0 and summary["done"] + summary["skipped"] == 200 and summary["skipped"] >= kill_at[-1]

    lines = (out / "manifest.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is whole JSON
    ids = [e["id"] for e in entries]
    assert sorted(ids) == sorted(item.id for item in job.items)  # every item exactly once
    by_id = {item.id: item for item in job.items}
    for entry in entries:
        assert entry["status"] == "done" and entry["config_hash"] == by_id[entry["id"]].config_hash
        check_files_match_manifest(out, entry)
    assert temp_files(out) == [] and not (out / ".ponder-render.lock").exists()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(by_id)
    assert all(len(list((out / i).iterdir())) == 3 for i in by_id)  # candidate, best, result.json: nothing partial

    # what survived the kills is what an uninterrupted render gives
    worker = Worker(threads=1)
    for item in rng.sample(job.items, 3):
        rendered = worker.render(item.spec(), item.config_hash).files
        assert {f"{item.id}/{name}": data for name, data in rendered.items()} == {
            name: (out / name).read_bytes() for name in json.loads(lines[ids.index(item.id)])["files"]}
