"""ponder's own per-machine state files under ``$PONDER_HOME`` (default ``~/.cache/ponder``).

The render jobs' cost model (`costs.json`) and weight fingerprints (`fingerprints.json`) live here.
Reads tolerate a missing or torn file (they give an empty table); writes are atomic (temp file,
then rename) and a home that cannot be written only costs the state next time.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def state_path(name: str) -> Path:
    return Path(os.environ.get("PONDER_HOME") or Path.home() / ".cache" / "ponder") / name


def read_state(name: str) -> dict:
    """The JSON object in state file `name`, or {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(state_path(name).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_state(name: str, data: dict) -> None:
    """Replace state file `name` with `data` atomically; a home that cannot be written is skipped."""
    path = state_path(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temp.write_text(json.dumps(data, sort_keys=True))
        os.replace(temp, path)
    except OSError:
        pass


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


__all__ = ["cpu_name", "read_state", "state_path", "write_state"]
