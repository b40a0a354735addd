"""The one error family of ponder.

Every error a user can cause is a `PonderError`; its message names the bad value and what is allowed.
The CLI prints the message on stderr and exits with status 2 (no traceback unless ``--debug``).
"""

from __future__ import annotations


class PonderError(Exception):
    """Base of every error ponder raises on purpose."""

    exit_code = 2


class ConfigError(PonderError):
    """An option or configuration value is out of range or unknown."""


class InputError(PonderError):
    """A prompt or input is unusable (empty, too long for the model's context, ...)."""


class ModelLoadError(PonderError):
    """A model folder or zoo name cannot be loaded."""


class ZooError(ModelLoadError):
    """An unknown zoo name, or zoo weights that are not built yet."""


# ---- the one checker of numbers: every surface and room names bad values the same way -------------


def check_int(name: str, value, *, minimum: int | None = 1, maximum: int | None = None, what: str = "") -> int:
    """`value` as an int in [minimum, maximum]; a ConfigError naming `name`, the value and the range.

    `minimum` defaults to 1 (a positive integer); pass None for no bound. `what` says what the number
    counts (``"number of candidates"``) in the message. Booleans and floats (even whole ones: a
    job file's ``4.0`` is a typo) are refused.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be {_int_range(minimum, maximum)}{_what(what)}, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{name} must be {_int_range(minimum, maximum)}{_what(what)}, got {value}")
    return value


def check_number(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
                 open_min: bool = False, open_max: bool = False, what: str = "") -> float:
    """`value` as a float within the bounds (open or closed); a ConfigError naming it otherwise."""
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or value != value
    if not bad:
        value = float(value)
        bad = ((minimum is not None and (value < minimum or (open_min and value == minimum)))
               or (maximum is not None and (value > maximum or (open_max and value == maximum))))
    if bad:
        raise ConfigError(f"{name} must be {_number_range(minimum, maximum, open_min, open_max)}{_what(what)}, "
                          f"got {value!r}")
    return value


def _what(what: str) -> str:
    return f" ({what})" if what else ""


def _int_range(minimum: int | None, maximum: int | None) -> str:
    if minimum == 1 and maximum is None:
        return "a positive integer"
    if minimum == 0 and maximum is None:
        return "an integer >= 0"
    if minimum is None and maximum is None:
        return "an integer"
    if maximum is None:
        return f"an integer >= {minimum}"
    if minimum is None:
        return f"an integer <= {maximum}"
    return f"an integer from {minimum} to {maximum}"


def _number_range(minimum, maximum, open_min: bool, open_max: bool) -> str:
    if minimum is None and maximum is None:
        return "a number"
    if maximum is None:
        return f"a number {'>' if open_min else '>='} {minimum:g}"
    if minimum is None:
        return f"a number {'<' if open_max else '<='} {maximum:g}"
    return f"a number in {'(' if open_min else '['}{minimum:g}, {maximum:g}{')' if open_max else ']'}"
