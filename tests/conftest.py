"""Set-up shared by every test: hypothesis profiles and a Hugging Face Hub that is never the live one.

- hypothesis: the ``ci`` profile (derandomized) is loaded when the environment variable ``CI`` is set, as
  in ``.ci/run``; otherwise ``dev``.
- Every test runs with ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` pointing at an empty folder under its tmp
  dir, so a Hub id can only resolve from a cache the test populated itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_configure(config: pytest.Config) -> None:
    """Keep filterwarnings marks valid when the warnings plugin is off (``-p no:warnings``)."""
    config.addinivalue_line("markers", "filterwarnings(warning): ignore or raise matching warnings")


@pytest.fixture(autouse=True)
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, offline Hugging Face cache for this test: nothing can reach the live Hub."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache
