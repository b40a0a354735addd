"""ponder — make generative models think longer and decode faster at inference time.

    import ponder
    lm = ponder.load("text", "zoo:arith")
    res = ponder.generate(lm, "Q: 12+7*3\\n", strategy="sample", n=4, verifier="exact", seed=0)
    res.best.output, res.compute

`import ponder` stays light: torch, transformers and the rest load on first use.
"""

from __future__ import annotations

from ponder.errors import ConfigError, InputError, ModelLoadError, PonderError, ZooError

__version__ = "0.1.0"
__all__ = [
    "ConfigError",
    "InputError",
    "ModelLoadError",
    "PonderError",
    "ZooError",
    "__version__",
    "generate",
    "load",
    "load_verifier",
]


def __getattr__(name: str):
    if name in ("load", "generate", "load_verifier"):
        from ponder import api

        return getattr(api, name)
    raise AttributeError(f"module 'ponder' has no attribute {name!r}")
