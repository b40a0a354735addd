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
