"""Fixtures of the batch-job tests: job files on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml


@pytest.fixture
def write_job(tmp_path):
    """write_job(data, name="job.yaml") -> path of a YAML (or, for a list, JSONL) job file."""

    def write(data, name: str = "job.yaml") -> Path:
        path = tmp_path / name
        if isinstance(data, list):
            path.write_text("".join(json.dumps(item) + "\n" for item in data))
        elif isinstance(data, str):
            path.write_text(data)
        else:
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture(autouse=True)
def ponder_home(tmp_path_factory, monkeypatch) -> Path:
    """Each job test keeps ponder's per-machine state (cost model, weight fingerprints) in its own
    folder beside its tmp_path, never in the real ~/.cache/ponder."""
    home = tmp_path_factory.mktemp("ponder-home")
    monkeypatch.setenv("PONDER_HOME", str(home))
    return home
