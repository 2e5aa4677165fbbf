"""Shared set-up of the reliability tests: an offline, empty Hugging Face cache for every test,
and the hypothesis profiles (derandomized when the environment variable ``CI`` is set)."""

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


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory):
    """Good adapters and a checkpoint, built once for the whole session; tests copy them
    (``lab.copy``) before changing anything."""
    from ._lab import build_lab

    return build_lab(tmp_path_factory.mktemp("lab"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Silence transformers' own deprecation chatter while the lab's tiny models are built."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning"))
