"""The output folder of a job: atomic files, the manifest, and what resume reads back.

Layout under ``--out``::

    manifest.jsonl          one line per finished item (done or failed), appended and fsynced
    ITEM_ID/result.json     the item's spec and its Result (compute seconds live in the manifest)
    ITEM_ID/best.txt        the best candidate's output (.png / .wav for images / audio)
    ITEM_ID/candidate_000.txt ...

Every file is written to a temp file in the same folder, fsynced and renamed into place, so a
reader (or a resumed job) never sees half a file. A manifest line is written only after all of its
item's files are in place; a line torn by a kill is cut off when the job resumes, and so is any
temp file a kill left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ponder.errors import ConfigError

MANIFEST = "manifest.jsonl"
LOCK = ".ponder-render.lock"
TEMP_PREFIX = ".ponder-"
TEMP_SUFFIX = ".tmp"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder: fsync, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class OutputDir:
    """The ``--out`` folder: path checks, item folders, the manifest and its lock."""

    def __init__(self, root: str | Path):
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise ConfigError(f"--out {str(root)!r} exists and is not a folder")
        self.root = root
        self._lock_fd: int | None = None

    # -- paths: nothing outside root ------------------------------------------------------------

    def item_dir(self, item_id: str) -> Path:
        """The folder of `item_id`, checked to lie directly under the output folder."""
        folder = self.root / item_id
        if item_id in ("", ".", "..", MANIFEST) or "/" in item_id or os.sep in item_id or folder.parent != self.root:
            raise ConfigError(f"item id {item_id!r} cannot name a folder under --out")
        resolved_root = self.root.resolve()
        if folder.resolve().parent != resolved_root:  # e.g. a symlink planted under --out
            raise ConfigError(f"item folder {str(folder)!r} resolves outside --out")
        return folder

    # -- lifecycle -------------------------------------------------------------------------------

    def open(self) -> None:
        """Create the folder, take the lock, remove temp files and cut a torn manifest line."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"another `ponder render` is writing to {str(self.root)!r}") from None
        self._lock_fd = fd
        self.remove_temp_files()
        self._repair_manifest()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            (self.root / LOCK).unlink(missing_ok=True)

    def __enter__(self) -> OutputDir:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def remove_temp_files(self) -> int:
        """Delete temp files a killed run left behind (only ponder's own, only under root)."""
        removed = 0
        for path in self.root.rglob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed += 1
        return removed

    # -- the manifest ----------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def _repair_manifest(self) -> None:
        path = self.manifest_path
        if not path.is_file():
            return
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):  # a kill tore the last line: keep the whole ones
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
                f.flush()
                os.fsync(f.fileno())

    def read_manifest(self) -> dict[str, dict]:
        """item id -> its latest manifest entry."""
        return latest_entries(self.manifest_path)

    def append(self, entry: dict) -> None:
        """Append one entry to the manifest as a single write, then fsync."""
        line = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.manifest_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def is_done(self, entry: dict | None, config_hash: str, weights: str | None = None) -> bool:
        """Whether `entry` records this config as done, with these weights, and its files are all present.

        weights: the item's weights fingerprint (`ponder.jobs.fingerprint`); an entry written before
        fingerprints existed (no ``weights`` key) counts as done whatever it is."""
        if not entry or entry.get("status") != "done" or entry.get("config_hash") != config_hash:
            return False
        if "weights" in entry and entry["weights"] != weights:
            return False
        for name, info in entry.get("files", {}).items():
            path = self.root / name
            if not path.is_file() or path.stat().st_size != info.get("bytes"):
                return False
        return True

    # -- an item's files -------------------------------------------------------------------------

    def write_item(self, item_id: str, files: dict[str, bytes]) -> dict[str, dict]:
        """Write an item's files atomically into a fresh item folder.

        Anything an earlier, unfinished attempt left in the folder is removed first. If a write
        fails, the files of this item are removed again and the error propagates.

        Returns:
            ``{"ITEM_ID/name": {"sha256": ..., "bytes": ...}}`` for the manifest.
        """
        folder = self.item_dir(item_id)
        self.remove_item(item_id)
        folder.mkdir()
        recorded = {}
        try:
            for name, data in files.items():
                if "/" in name or name.startswith("."):
                    raise ConfigError(f"output file name {name!r} is not a plain file name")
                write_atomic(folder / name, data)
                recorded[f"{item_id}/{name}"] = {"sha256": sha256(data), "bytes": len(data)}
            _fsync_dir(folder)
        except BaseException:
            self.remove_item(item_id)
            raise
        return recorded

    def remove_item(self, item_id: str) -> None:
        folder = self.item_dir(item_id)
        if folder.is_symlink() or folder.is_file():
            folder.unlink()
        elif folder.is_dir():
            shutil.rmtree(folder)


def latest_entries(manifest: str | Path) -> dict[str, dict]:
    """item id -> its latest entry in the manifest at `manifest` (empty when there is none)."""
    path = Path(manifest)
    if not path.is_file():
        return {}
    entries: dict[str, dict] = {}
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a torn last line (no newline yet): not an entry
                continue
            raise ConfigError(f"{path}: line {number} is not JSON; the manifest is damaged") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise ConfigError(f"{path}: line {number} is not a manifest entry")
        entries[entry["id"]] = entry
    return entries
