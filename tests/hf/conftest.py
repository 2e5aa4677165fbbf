"""Real parts for the share_hf tests, and a Hub that is never the live one.

Every test here runs with ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` pointing at an empty folder
under the test's tmp dir, so a Hub id can only resolve from a cache the test populated itself.
"""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest


@pytest.fixture(autouse=True)
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, offline Hugging Face cache for this test (nothing can reach the live Hub)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Silence transformers' own deprecation chatter, for the tests of this folder only."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning"))


def pytest_configure(config: pytest.Config) -> None:
    """Keep the filterwarnings marks valid when the warnings plugin is off (``-p no:warnings``)."""
    config.addinivalue_line("markers", "filterwarnings(warning): ignore or raise matching warnings")
