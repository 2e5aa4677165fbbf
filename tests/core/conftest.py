"""Backends for the share_core tests: every function runs over each of them.

Data are drawn with NumPy (float64) and converted per backend. The read-only NumPy backend
hands out arrays with ``writeable=False``, so any in-place write to an input raises.
Set the environment variable ``CI`` to load the derandomized hypothesis profile.
"""

from __future__ import annotations

import pytest

from core_testing import BACKENDS, Backend



@pytest.fixture(scope="session", params=BACKENDS, ids=lambda b: b.name)
def backend(request) -> Backend:
    """One array backend: its namespace, device, and converters from/to NumPy."""
    chosen: Backend = request.param
    if chosen.unavailable():
        pytest.skip(chosen.unavailable())
    return chosen


@pytest.fixture(scope="session")
def xp(backend: Backend):
    """The array-API namespace of the current backend."""
    return backend.xp


@pytest.fixture(scope="session", params=["float32", "float64"])
def dtype(request) -> str:
    """Working precision of a test, by name."""
    return request.param
