"""Model sources: local folders resolve, bad ones are named, hub ids go to the hub (offline here)."""

import shutil
from fnmatch import fnmatch

import huggingface_hub.constants
import pytest

from moecomp.compression.context import RunContext
from moecomp.compression.sources import HUB_ALLOW_PATTERNS, ModelNotFoundError, resolve_model
from tests.compression.local_hub import local_hub


def test_local_folder_resolves_in_every_form(tiny_mixtral_dir, monkeypatch):
    assert resolve_model(tiny_mixtral_dir) == tiny_mixtral_dir.resolve()
    assert resolve_model(str(tiny_mixtral_dir)) == tiny_mixtral_dir.resolve()
    assert resolve_model({"kind": "local", "path": str(tiny_mixtral_dir)}) == tiny_mixtral_dir.resolve()
    monkeypatch.chdir(tiny_mixtral_dir.parent)
    assert resolve_model("./tiny-mixtral") == tiny_mixtral_dir.resolve()


def test_missing_folder_and_missing_config_are_named(tmp_path, tiny_mixtral_dir):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "nothing"))
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(tmp_path)
    shutil.copy(tiny_mixtral_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelNotFoundError, match="no .safetensors"):
        resolve_model(tmp_path)
    # a FileNotFoundError, so generic handlers treat it as a missing model
    assert issubclass(ModelNotFoundError, FileNotFoundError)


def test_hub_id_goes_to_the_hub_and_reports_why_it_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError, match=r"could not fetch 'someorg/some-moe' \(revision v1\)"):
        resolve_model("someorg/some-moe", revision="v1", cache_dir=tmp_path)
    with pytest.raises(ModelNotFoundError, match="revision abc"):
        resolve_model({"kind": "hub", "id": "someorg/some-moe", "revision": "abc"}, cache_dir=tmp_path)


def test_neither_path_nor_hub_id_is_refused():
    with pytest.raises(ModelNotFoundError, match="neither an existing folder nor a hub id"):
        resolve_model("not a valid id!")
    with pytest.raises(ModelNotFoundError, match="cannot be resolved here"):
        resolve_model({"kind": "upload", "upload_id": "u1"})


def test_hub_downloads_never_fetch_code():
    assert not any(p.endswith(".py") or p == "*" for p in HUB_ALLOW_PATTERNS)
    assert "*.safetensors" in HUB_ALLOW_PATTERNS and "config.json" in HUB_ALLOW_PATTERNS


def test_hub_download_reports_its_bytes_and_a_second_job_reads_the_shared_cache(
    tmp_path, monkeypatch, tiny_mixtral_dir
):
    extra = {"modeling_custom.py": b"raise SystemExit('remote code ran')\n"}
    with local_hub(monkeypatch, "moecomp/tiny-mixtral", tiny_mixtral_dir, extra) as hub:
        events = []
        ctx = RunContext(sink=lambda kind, stage, data: events.append((kind, stage, data)))
        folder = resolve_model("moecomp/tiny-mixtral", cache_dir=tmp_path / "hub", ctx=ctx)
        wanted = [p for p in tiny_mixtral_dir.iterdir() if any(fnmatch(p.name, a) for a in HUB_ALLOW_PATTERNS)]
        assert sorted(p.name for p in folder.iterdir()) == sorted(hub.file_gets()) == sorted(p.name for p in wanted)
        assert "training.json" not in hub.file_gets() and "modeling_custom.py" not in hub.file_gets()  # no code
        weights = sum(p.stat().st_size for p in wanted)
        progress = [data for kind, stage, data in events if kind == "progress" and stage == "download"]
        assert progress and all(d["unit"] == "MB" and d["model"] == "moecomp/tiny-mixtral@main" for d in progress)
        assert [d["step"] for d in progress] == sorted(d["step"] for d in progress)
        assert progress[-1]["step"] == progress[-1]["total"] == round(weights / 1e6, 1)

        again = []
        ctx = RunContext(sink=lambda kind, stage, data: again.append(data))
        sent = len(hub.file_gets())
        assert resolve_model("moecomp/tiny-mixtral", cache_dir=tmp_path / "hub", ctx=ctx) == folder
        assert len(hub.file_gets()) == sent and again == []  # the cache answered: nothing downloaded again
