"""Shared set-up of the reliability tests: the lab of good adapters and a checkpoint.

The offline Hub cache and the hypothesis profiles come from ``tests/conftest.py``."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory):
    """Good adapters and a checkpoint, built once for the whole session; tests copy them
    (``lab.copy``) before changing anything."""
    from ._lab import build_lab

    return build_lab(tmp_path_factory.mktemp("lab"))
