"""Hub ids through a local HF cache with HF_HUB_OFFLINE=1, and pushes checked at the HfApi boundary."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import CommitInfo
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import filter_repo_objects

from share_hf import (
    AdapterNotFoundError,
    CheckpointError,
    ShareError,
    load_checkpoint,
    open_adapter,
    push_checkpoint_to_hub,
    save_checkpoint,
)

from ._helpers import assert_same_tensors, make_checkpoint, populate_hub_cache, read_tensors, save_adapter


def test_open_adapter_from_the_offline_cache(tmp_path: Path, hf_cache: Path) -> None:
    folder = save_adapter(tmp_path / "build" / "x", r=4)
    commit = populate_hub_cache(hf_cache, "org/sst2-lora", folder)
    src = open_adapter("org/sst2-lora")
    assert src.name == "sst2-lora" and src.source == "org/sst2-lora"
    assert src.path == hf_cache / "models--org--sst2-lora" / "snapshots" / commit
    assert len(src.modules) == 4 and "base_model.model.classifier.weight" in src.carried_keys
    m = next(iter(src.modules.values()))
    a, _ = src.load_factors(m.name)
    assert_same_tensors({"a": a}, {"a": read_tensors(folder / "adapter_model.safetensors")[m.a_key]})


def test_revision_picks_the_branch(tmp_path: Path, hf_cache: Path) -> None:
    populate_hub_cache(hf_cache, "org/task", save_adapter(tmp_path / "r4", r=4))
    populate_hub_cache(hf_cache, "org/task", save_adapter(tmp_path / "r2", r=2), revision="small")
    assert {m.rank for m in open_adapter("org/task").modules.values()} == {4}
    assert {m.rank for m in open_adapter("org/task", revision="small").modules.values()} == {2}


def test_local_folder_wins_over_a_hub_id(tmp_path: Path, hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    populate_hub_cache(hf_cache, "org/task", save_adapter(tmp_path / "hub", r=4))
    monkeypatch.chdir(tmp_path)
    save_adapter(tmp_path / "org" / "task", r=2)
    assert open_adapter("org/task").path == Path("org/task")
    assert {m.rank for m in open_adapter("org/task").modules.values()} == {2}


def test_unreachable_hub_id_offline(tmp_path: Path) -> None:
    with pytest.raises(AdapterNotFoundError, match="expected a local PEFT adapter folder or a Hub repo id") as exc:
        open_adapter("org/not-cached")
    assert "'org/not-cached'" in str(exc.value) and "HF_HUB_OFFLINE" in str(exc.value)
    assert exc.value.__cause__ is not None


def test_hub_repo_without_safetensors(tmp_path: Path, hf_cache: Path) -> None:
    folder = save_adapter(tmp_path / "x")
    (folder / "adapter_model.safetensors").unlink()
    populate_hub_cache(hf_cache, "org/old", folder)
    with pytest.raises(Exception, match="no adapter_model.safetensors"):
        open_adapter("org/old")


def test_load_checkpoint_from_the_offline_cache(tmp_path: Path, hf_cache: Path) -> None:
    ckpt = make_checkpoint()
    save_checkpoint(ckpt, tmp_path / "ck")
    populate_hub_cache(hf_cache, "org/glue-share", tmp_path / "ck")
    loaded = load_checkpoint("org/glue-share")
    assert loaded.config == ckpt.config and sorted(loaded.loadings) == ["cola", "mrpc", "sst2"]
    assert_same_tensors(loaded.loadings["mrpc"], ckpt.loadings["mrpc"])
    assert_same_tensors(loaded.heads["sst2"], ckpt.heads["sst2"])


def test_partial_hub_load_needs_only_that_adapter(tmp_path: Path, hf_cache: Path) -> None:
    ckpt = make_checkpoint()
    save_checkpoint(ckpt, tmp_path / "ck")
    # a cache holding only what a partial download of "cola" fetched
    populate_hub_cache(hf_cache, "org/glue-share", tmp_path / "ck", skip=("adapters/sst2", "adapters/mrpc"))
    part = load_checkpoint("org/glue-share", adapters=["cola"])
    assert list(part.loadings) == ["cola"]
    assert_same_tensors(part.loadings["cola"], ckpt.loadings["cola"])
    with pytest.raises(CheckpointError, match="'sst2' is listed in share_config.json but adapters/sst2/ is missing"):
        load_checkpoint("org/glue-share")


def test_partial_hub_load_asks_the_hub_for_only_those_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    save_checkpoint(make_checkpoint(), tmp_path / "ck")
    asked = {}

    def fake_snapshot_download(repo_id, *, allow_patterns, revision, token):
        asked.update(repo_id=repo_id, allow_patterns=allow_patterns, revision=revision, token=token)
        return str(tmp_path / "ck")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    load_checkpoint("org/glue-share", adapters=["cola"], revision="v1", token="hf_x")
    assert asked["revision"] == "v1" and asked["token"] == "hf_x"
    repo_files = [p.relative_to(tmp_path / "ck").as_posix() for p in (tmp_path / "ck").rglob("*") if p.is_file()]
    fetched = sorted(filter_repo_objects(repo_files, allow_patterns=asked["allow_patterns"]))
    assert fetched == ["adapters/cola/adapter_meta.json", "adapters/cola/loadings.safetensors",
                       "share_config.json", "shared_components.safetensors"]


def test_unreachable_checkpoint_offline() -> None:
    with pytest.raises(CheckpointError, match="lorashare checkpoint folder or a Hub repo id.*'org/nothing'"):
        load_checkpoint("org/nothing")


# ------------------------------------------------------------------------------ push


@pytest.fixture
def hub_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    """Record what push_checkpoint_to_hub sends through HfApi; upload lists the files it would send."""
    calls: list[tuple[str, dict]] = []

    def create_repo(self, **kwargs):
        calls.append(("create_repo", kwargs | {"token": self.token}))

    def create_branch(self, **kwargs):
        calls.append(("create_branch", kwargs))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        local = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        sent = sorted(filter_repo_objects(local, allow_patterns=kwargs.get("allow_patterns"),
                                          ignore_patterns=kwargs.get("ignore_patterns")))
        calls.append(("upload_folder", kwargs | {"sent": sent}))
        return CommitInfo(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc123",
                          commit_message=kwargs["commit_message"], commit_description="", oid="abc123")

    for name, fn in [("create_repo", create_repo), ("create_branch", create_branch), ("upload_folder", upload_folder)]:
        monkeypatch.setattr(huggingface_hub.HfApi, name, fn)
    return calls


def test_push_sends_the_checkpoint_files(tmp_path: Path, hub_calls) -> None:
    save_checkpoint(make_checkpoint(), tmp_path / "ck")
    (tmp_path / "ck" / "README.md").write_text("# card")
    (tmp_path / "ck" / "notes.txt").write_text("local only")
    url = push_checkpoint_to_hub(tmp_path / "ck", "me/glue-share", private=True, token="hf_secret")
    assert url == "https://huggingface.co/me/glue-share/commit/abc123"
    assert [c[0] for c in hub_calls] == ["create_repo", "upload_folder"]
    create, upload = hub_calls[0][1], hub_calls[1][1]
    assert create["repo_id"] == "me/glue-share" and create["private"] is True and create["exist_ok"] is True
    assert create["token"] == "hf_secret"
    assert upload["repo_id"] == "me/glue-share" and Path(upload["folder_path"]) == tmp_path / "ck"
    assert upload["sent"] == sorted([
        "README.md", "share_config.json", "shared_components.safetensors",
        "adapters/sst2/adapter_meta.json", "adapters/sst2/classifier_head.safetensors",
        "adapters/sst2/loadings.safetensors", "adapters/cola/adapter_meta.json",
        "adapters/cola/loadings.safetensors", "adapters/mrpc/adapter_meta.json",
        "adapters/mrpc/loadings.safetensors",
    ])
    assert upload["delete_patterns"] == ["adapters/*"]  # stale adapters of an earlier push go
    assert upload["commit_message"] == "Upload lorashare checkpoint (3 adapters)"


def test_push_to_a_branch_with_a_message(tmp_path: Path, hub_calls) -> None:
    save_checkpoint(make_checkpoint(), tmp_path / "ck")
    push_checkpoint_to_hub(tmp_path / "ck", "me/x", revision="exp", commit_message="k=3")
    assert [c[0] for c in hub_calls] == ["create_repo", "create_branch", "upload_folder"]
    assert hub_calls[1][1] == {"repo_id": "me/x", "branch": "exp", "exist_ok": True, "repo_type": "model"}
    assert hub_calls[2][1]["revision"] == "exp" and hub_calls[2][1]["commit_message"] == "k=3"


def test_push_refuses_a_damaged_checkpoint_before_any_hub_call(tmp_path: Path, hub_calls) -> None:
    save_checkpoint(make_checkpoint(), tmp_path / "ck")
    shutil.rmtree(tmp_path / "ck" / "adapters" / "cola")
    with pytest.raises(CheckpointError, match="adapters/cola/ is missing"):
        push_checkpoint_to_hub(tmp_path / "ck", "me/x")
    assert hub_calls == []


def test_push_wraps_hub_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(make_checkpoint(), tmp_path / "ck")

    def denied(self, **kwargs):
        request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
        raise HfHubHTTPError("403 Forbidden: you cannot write to me/x",
                             response=httpx2.Response(403, request=request))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", denied)
    with pytest.raises(ShareError, match="could not push checkpoint .* 'me/x'.*403 Forbidden.*write access") as exc:
        push_checkpoint_to_hub(tmp_path / "ck", "me/x")
    assert isinstance(exc.value.__cause__, HfHubHTTPError)


def test_offline_push_fails_cleanly(tmp_path: Path) -> None:
    save_checkpoint(make_checkpoint(), tmp_path / "ck")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(ShareError, match="could not push"):
        push_checkpoint_to_hub(tmp_path / "ck", "me/x", token="hf_fake")
