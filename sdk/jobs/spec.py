"""Job files: defaults + items + matrix expansion, validated before anything runs.

A job file is YAML (a mapping) or JSONL (one item per line)::

    defaults:                        # every item starts from these
      modality: text
      model: zoo:arith
      options: {max_new_tokens: 48, temperature: 0.8}
    matrix:                          # every item is expanded over the product of these
      seed: [0, 1]
      strategy: [sample, best-of-n]
    items:
      - id: sum
        prompt: "Q: 58+36-7*2\\n"
        verifier: exact
      - id: many
        matrix: {prompt: ["Q: 1+2\\n", "Q: 3*4\\n"]}   # an item may add its own matrix

An expanded item's id is its own id plus one part per matrix field (``sum.seed-0.strategy-sample``);
a value that is not a short plain token (a prompt, a dict of options) is named by its index
(``many.prompt-1``). Ids name the output folders, so they never contain a path separator or a
raw prompt.

`options` hold everything else a generation takes: temperature, top_k, top_p, min_p,
max_new_tokens, stop, draft, calibrate, steps (diffusion), lossless, the modality's load options
(e.g. height, width, sampler for image diffusion) and the strategy's and decoder's own options
(beam_width, ...); the item is checked as one `ponder.request.Request`. Options of `defaults` and of
an item merge key by key (the item wins).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

from ponder.errors import ConfigError, PonderError

# bumped when what an item writes changes, so that resume re-renders items of an older layout
LAYOUT_VERSION = 1
ITEM_FIELDS = ("modality", "model", "prompt", "strategy", "n", "verifier", "decoder", "seed", "options")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,119}$")
MAX_ITEMS = 100_000  # beyond this a job file is a mistake (or should be several jobs)
RESERVED_IDS = frozenset({"manifest.jsonl"})  # names the output folder uses itself
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,23}$")


class _Fields(BaseModel):
    """The item fields, every one optional: what `defaults` and an item may set."""

    model_config = ConfigDict(extra="forbid")

    modality: StrictStr | None = None
    model: StrictStr | None = None
    prompt: StrictStr | None = None
    strategy: StrictStr | None = None
    n: StrictInt | None = Field(default=None, gt=0)
    verifier: StrictStr | None = None
    decoder: StrictStr | None = None
    seed: StrictInt | None = None
    options: dict[StrictStr, Any] | None = None


class _RawItem(_Fields):
    id: StrictStr | None = Field(default=None, pattern=ID_PATTERN.pattern)
    matrix: dict[StrictStr, list[Any]] | None = None


class _RawJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr | None = None
    defaults: _Fields = Field(default_factory=_Fields)
    matrix: dict[StrictStr, list[Any]] | None = None
    items: list[_RawItem] = Field(min_length=1)


class Item(BaseModel):
    """One fully specified unit of work: what one `ponder.generate` call needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: StrictStr = Field(pattern=ID_PATTERN.pattern)
    modality: StrictStr
    model: StrictStr = Field(min_length=1)
    prompt: StrictStr = Field(min_length=1)
    strategy: StrictStr = "sample"
    n: StrictInt = Field(default=1, gt=0)
    verifier: StrictStr | None = None
    decoder: StrictStr = "plain"
    seed: StrictInt = 0
    options: dict[StrictStr, Any] = Field(default_factory=dict)

    @field_validator("options")
    @classmethod
    def _plain_json(cls, options: dict) -> dict:
        try:  # what the manifest, result.json and the config hash must hold
            json.dumps(options, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"options must hold plain JSON values (numbers, strings, lists, mappings): {err}") \
                from None
        return options

    def spec(self) -> dict:
        """The item as plain JSON types, id first."""
        return self.model_dump()

    @property
    def config_hash(self) -> str:
        """sha256 of everything that determines the item's outputs (the id excluded)."""
        body = {k: v for k, v in self.model_dump().items() if k != "id"}
        text = json.dumps({"layout": LAYOUT_VERSION, **body}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def model_key(self) -> tuple[str, str]:
        """What a worker loads for this item; items are grouped by it."""
        return (self.modality, self.model)


@dataclass(frozen=True)
class Job:
    """A validated, expanded job: `items` in file order."""

    name: str
    source: str
    items: list[Item]

    def __len__(self) -> int:
        return len(self.items)


# ---- reading -------------------------------------------------------------------------------------


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pydantic_error(source: str, err: ValidationError, label: str = "") -> ConfigError:
    """The first error of `err` as one line naming the item and the field."""
    errors = err.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    in_item = bool(label) or loc[:1] == ("items",)
    in_defaults = loc[:1] == ("defaults",)
    if loc[:1] == ("items",) and len(loc) >= 2 and isinstance(loc[1], int):
        label, loc = f"item {loc[1] + 1}", loc[2:]
    where = f"{label}: " if label else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    got = "" if first["type"] in ("missing", "extra_forbidden") else f"; got {_one_line(repr(first['input']), 60)}"
    if first["type"] == "extra_forbidden":
        allowed = ["id", *ITEM_FIELDS, "matrix"] if in_item else list(ITEM_FIELDS) if in_defaults \
            else list(_RawJob.model_fields)
        what = f"unknown field (allowed: {', '.join(allowed)})"
    elif first["type"] == "string_pattern_mismatch":
        what = ("an id is 1-120 letters, digits, '_', '.', '+' or '-', starting with a letter or digit "
                "(it names the item's output folder)")
    else:
        what = first["msg"]
    field = ".".join(str(p) for p in loc) or "(top level)"
    return ConfigError(_one_line(f"{source}: {where}field {field!r}: {what}{got}{more}", 400))


def _parse_text(path: Path, text: str) -> dict:
    """The job file's content as a `_RawJob`-shaped dict."""
    import yaml

    if path.suffix.lower() == ".jsonl":
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}: line {number} is not JSON: {err.msg} (column {err.colno})") from None
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: line {number} must be a JSON object (one item), "
                                  f"got {type(value).__name__}")
            items.append(value)
        return {"items": items}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(_one_line(f"{path}: not valid YAML{at}: {problem}")) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: a job file is a mapping with 'items' (and optional 'defaults', 'matrix', "
                          f"'name'), got {type(value).__name__}")
    return value


def load_job(path: str | Path) -> Job:
    """Read, validate and expand the job file at `path` (``.yaml`` / ``.yml`` / ``.json`` / ``.jsonl``).

    Returns:
        The `Job` with every item expanded and checked (names of strategies, decoders, verifiers,
        zoo models, options and sampling values).
    Raises:
        ConfigError: one line naming the item and the field at fault.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read job file {str(path)!r}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    return parse_job(_parse_text(path, text), source=str(path))


def parse_job(data: Any, source: str = "job") -> Job:
    """Validate and expand an already-parsed job (the mapping a YAML job file holds)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a job is a mapping with 'items', got {type(data).__name__}")
    try:
        raw = _RawJob.model_validate(data)
    except ValidationError as err:
        raise _pydantic_error(source, err) from None
    items: list[Item] = []
    for position, raw_item in enumerate(raw.items, 1):
        items.extend(_expand(source, raw, raw_item, position))
        if len(items) > MAX_ITEMS:
            raise ConfigError(f"{source}: the job expands to more than {MAX_ITEMS} items; split it into several files")
    seen: dict[str, int] = {}
    for item in items:
        if item.id in RESERVED_IDS:
            raise ConfigError(f"{source}: the id {item.id!r} is reserved (it names a file of the output folder)")
        if item.id in seen:
            raise ConfigError(f"{source}: two items expand to the id {item.id!r}; give each item its own id")
        seen[item.id] = 1
    checker = _Checker(source)
    for item in items:
        checker.check(item)
    return Job(name=raw.name or Path(source).stem, source=source, items=items)


def _id_part(field: str, value: Any, index: int) -> str:
    if field != "prompt" and isinstance(value, (str, int)) and not isinstance(value, bool) \
            and _TOKEN.match(str(value)):
        return f"{field}-{value}"
    return f"{field}{index}"


def _expand(source: str, job: _RawJob, raw: _RawItem, position: int) -> list[Item]:
    label = f"item {position}" + (f" (id {raw.id!r})" if raw.id else "")
    set_fields = raw.model_dump(exclude_unset=True, exclude={"id", "matrix"})
    matrix: dict[str, list[Any]] = {}
    for scope, block in (("matrix", job.matrix or {}), (f"{label} matrix", raw.matrix or {})):
        for field, values in block.items():
            if field not in ITEM_FIELDS:
                raise ConfigError(f"{source}: {scope}: cannot vary {field!r}; a matrix varies "
                                  f"{', '.join(ITEM_FIELDS)}")
            if not values:
                raise ConfigError(f"{source}: {scope}: field {field!r} has no values")
            if field in matrix:
                raise ConfigError(f"{source}: {label}: field {field!r} is varied by both the job's and the "
                                  f"item's matrix")
            if field in set_fields:
                raise ConfigError(f"{source}: {label}: field {field!r} is set by the item and varied by the "
                                  f"matrix; do one or the other")
            matrix[field] = values
    base = {k: v for k, v in job.defaults.model_dump(exclude_unset=True).items()}
    base_options = dict(base.pop("options", None) or {})
    base.update({k: v for k, v in set_fields.items() if k != "options"})
    base_options.update(set_fields.get("options") or {})
    base_id = raw.id or f"item-{position:04d}"
    fields = list(matrix)
    size = math.prod(len(v) for v in matrix.values())
    if size > MAX_ITEMS:
        raise ConfigError(f"{source}: {label}: the matrix expands to {size} items; a job file holds at most "
                          f"{MAX_ITEMS}")
    out = []
    for combo in itertools.product(*(list(enumerate(matrix[f])) for f in fields)):
        values = dict(base)
        options = dict(base_options)
        parts = [base_id]
        for field, (index, value) in zip(fields, combo):
            if field == "options":
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: {label}: matrix field 'options' wants mappings, "
                                      f"got {_one_line(repr(value), 60)}")
                options.update(value)
            else:
                values[field] = value
            parts.append(_id_part(field, value, index))
        item_id = ".".join(parts)
        where = f"{label}" + (f", expanded as {item_id!r}" if fields else "")
        if "modality" not in values or "model" not in values or "prompt" not in values:
            missing = [f for f in ("modality", "model", "prompt") if f not in values]
            raise ConfigError(f"{source}: {where}: missing field {missing[0]!r} (set it on the item, in "
                              "'defaults' or in a 'matrix')")
        try:
            out.append(Item.model_validate({**values, "options": options, "id": item_id}))
        except ValidationError as err:
            raise _pydantic_error(source, err, where) from None
    return out


class _Checker:
    """Names checked against the registries, once per distinct value; no model is loaded."""

    def __init__(self, source: str):
        self.source = source
        self.seen: set[str] = set()

    def check(self, item: Item) -> None:
        key = json.dumps({k: v for k, v in item.spec().items() if k not in ("id", "prompt", "seed")},
                         sort_keys=True, default=repr)
        if key in self.seen:
            return
        try:
            self._check(item)
        except PonderError as err:
            raise ConfigError(_one_line(f"{self.source}: item {item.id!r}: {err}", 400)) from None
        self.seen.add(key)

    def _check(self, item: Item) -> None:
        from ponder.request import request_from_item

        request_from_item(item.spec()).validate()
