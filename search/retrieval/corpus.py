"""A corpus: a folder of ``.txt`` / ``.md`` files (one document each, its id the relative path), or a
JSONL file of ``{"id": ..., "text": ...}`` lines. The same format serves a user's own documents and
the zoo's generated ones."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ponder.errors import InputError

SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class Document:
    id: str
    text: str


def read_corpus(path: str | Path) -> list[Document]:
    """Every document of the corpus at `path`, in a fixed order (sorted paths, or the JSONL's lines).

    Raises:
        InputError: a missing path, an unreadable file, a bad JSONL line (named by number), no
            documents at all, or two documents with one id.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"corpus {str(path)!r} does not exist; give a folder of .txt / .md files or a .jsonl file")
    documents = []
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES):
            try:
                documents.append(Document(file.relative_to(path).as_posix(), file.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as err:
                raise InputError(f"corpus file {str(file)!r} cannot be read as UTF-8 text: {err}") from None
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"corpus {str(path)!r} cannot be read as UTF-8 text: {err}") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"corpus {path.name} line {number}: not JSON ({err.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "id" not in row:
                raise InputError(f'corpus {path.name} line {number}: want {{"id": ..., "text": "..."}}, got '
                                 f"{line[:80]!r}")
            documents.append(Document(str(row["id"]), row["text"]))
    if not documents:
        raise InputError(f"corpus {str(path)!r} holds no documents (.txt / .md files, or JSONL lines)")
    ids = [d.id for d in documents]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"corpus {str(path)!r} has documents with the same id: {', '.join(twice[:5])}")
    return documents



def write_corpus(documents: list[Document], path: str | Path) -> Path:
    """`documents` as a JSONL corpus at `path` (what `read_corpus` reads back)."""
    path = Path(path)
    path.write_text("".join(json.dumps({"id": d.id, "text": d.text}, ensure_ascii=False) + "\n" for d in documents),
                    encoding="utf-8")
    return path


__all__ = ["Document", "read_corpus", "write_corpus"]
