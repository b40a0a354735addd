"""Decoder tests' shared fixtures: the tiny random Llama and Qwen2 of tests/conftest.py, loaded through
`ponder.load` once per test module."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def llama(tiny_model_folders):
    import ponder

    return ponder.load("text", str(tiny_model_folders["llama"]))


@pytest.fixture(scope="module")
def qwen2(tiny_model_folders):
    import ponder

    return ponder.load("text", str(tiny_model_folders["qwen2"]))
