"""The Ray backend on a local 2-CPU Ray: the same bytes as the local backend, the same resume."""

from __future__ import annotations

import pytest
from jobfiles import assert_same_outputs, check_files_match_manifest, read_output, snapshot, temp_files

from ponder.jobs import Job, parse_job, run_job

ray = pytest.importorskip("ray", reason="the ray extra is part of the dev install; CI has it")

JOB = {
    "defaults": {"modality": "text", "model": "zoo:arith", "options": {"max_new_tokens": 10, "temperature": 0.8}},
    "matrix": {"seed": [0, 1]},
    "items": [
        {"id": "best", "prompt": "Q: 58+36-7*2\n", "strategy": "best-of-n", "n": 2, "verifier": "exact"},
        {"id": "free", "matrix": {"prompt": ["Q: 12+7*3\n", "Q: 9*9-4\n"]}},
        {"id": "long", "prompt": "Q: " + "1+" * 200 + "1\n"},  # rejected by the model: failed on both backends
    ],
}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _comparable(entries: dict) -> dict:
    """Manifest entries without what legitimately differs between runs: wall time, and result.json's
    hash (its log-probs round differently in differently fused batches; `assert_same_outputs` compares
    them within a tolerance)."""
    return {k: {**v, "compute": {f: x for f, x in v["compute"].items() if f != "seconds"},
                "files": {f: x for f, x in v["files"].items() if not f.endswith("result.json")}}
            for k, v in entries.items()}


def test_ray_resumes_a_local_folder_and_writes_the_same_bytes_as_the_local_backend(local_ray, tmp_path):
    job = parse_job(JOB)
    local = run_job(job, tmp_path / "local", threads=1, progress=False)
    assert (local.done, local.failed) == (6, 2)
    # the local backend starts the folder, Ray finishes it: resume works across backends
    started = [item for item in job.items if item.id.startswith("free.seed-0")]
    run_job(Job(job.name, job.source, started), tmp_path / "ray", threads=1, progress=False)
    remote = run_job(job, tmp_path / "ray", backend="ray", workers=2, progress=False)
    assert (remote.skipped, remote.done, remote.failed) == (2, 4, 2)

    assert_same_outputs(tmp_path / "ray", tmp_path / "local")  # each side fused its own items
    assert len(snapshot(tmp_path / "local")) - 1 == 2 * 4 + 4 * 3  # best-of-n: 2 candidates + best + json
    local_entries, _ = read_output(tmp_path / "local")
    ray_entries, ray_lines = read_output(tmp_path / "ray")
    assert len(ray_lines) == len(job)  # one line per item, written by the driver alone
    assert _comparable(ray_entries) == _comparable(local_entries)
    for entry in ray_entries.values():
        check_files_match_manifest(tmp_path / "ray", entry)
    assert temp_files(tmp_path / "ray") == []
