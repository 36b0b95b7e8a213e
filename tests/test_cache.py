"""The content-addressed cache: stable keys, compute-once, atomic writes, one-line corruption errors."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from simo import cache, paths
from simo import merged as merged_mod
from simo import previews as previews_mod
from simo import steps as steps_mod
from simo.errors import CheckpointError


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


# ------------------------------------------------------------------------------- keys


def test_make_key_is_stable_and_order_independent():
    a = cache.make_key("step", {"x": 1, "y": [1, 2], "z": {"b": 0.5, "a": None}}, "c0")
    b = cache.make_key("step", {"z": {"a": None, "b": 0.5}, "y": (1, 2), "x": 1}, "c0")
    assert a == b
    assert len(a) == 20 and all(c in "0123456789abcdef" for c in a)


def test_make_key_changes_with_step_config_and_code():
    cfg = {"lr": 1e-3, "steps": 10}
    base = cache.make_key("train", cfg, "c0")
    assert cache.make_key("pretrain", cfg, "c0") != base
    assert cache.make_key("train", {**cfg, "steps": 11}, "c0") != base
    assert cache.make_key("train", {**cfg, "lr": 1.0000001e-3}, "c0") != base
    assert cache.make_key("train", {**cfg, "extra": None}, "c0") != base
    assert cache.make_key("train", cfg, "c1") != base


def test_closure_follows_imports_transitively_and_skips_neutral_modules():
    steps = cache.closure("simo.steps")
    assert {"simo.steps", "simo.train", "simo.models.heads", "simo.data.scenes", "simo.tasks",
            "simo.cache", "simo.config"} <= set(steps)
    # what training cannot run, and what cannot change a number, stays out
    assert not {"simo.plots", "simo.merging", "simo.realign", "simo.progress", "simo.errors",
                "simo.runner", "simo.notebook"} & set(steps)
    merged = cache.closure("simo.merged")
    assert set(steps) < set(merged)
    assert {"simo.realign", "simo.merging", "simo.models.adapters"} <= set(merged)
    assert "simo.plots" not in cache.closure("simo.previews.grids")


def _copy_package(tmp_path: Path) -> Path:
    shutil.copytree(paths.ROOT / "simo", tmp_path / "simo",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _edit(root: Path, module: str, old: str, new: str) -> None:
    f = root.joinpath(*module.split(".")).with_suffix(".py")
    src = f.read_text()
    assert old in src
    f.write_text(src.replace(old, new, 1))


# every cached step, by the function whose module keys it
STEP_MODULES = {"finetuned": steps_mod.finetuned.__module__,
                "merge_eval": merged_mod.MergeSetup.original.__module__,
                "preview_grid": previews_mod.preview_grid.__module__}


def test_editing_a_function_that_a_step_runs_changes_that_steps_key(tmp_path):
    root = _copy_package(tmp_path)
    before = {s: cache.code_version(m, root) for s, m in STEP_MODULES.items()}
    assert before == {s: cache.code_version(m) for s, m in STEP_MODULES.items()}  # a copy: same
    # evaluate_encoders scores every merged model: its edit must reach the merge evaluations (a
    # hand-written module list once left it out) and the preview grids, not the finetunes
    _edit(root, "simo.realign", "def evaluate_encoders(", "def evaluate_encoders(  # edited\n")
    cache.closure.cache_clear()
    after = {s: cache.code_version(m, root) for s, m in STEP_MODULES.items()}
    assert after["merge_eval"] != before["merge_eval"]
    assert after["preview_grid"] != before["preview_grid"]
    assert after["finetuned"] == before["finetuned"]
    # a loss edit reaches everything; a plotting edit reaches nothing
    _edit(root, "simo.tasks", "import math", "import math  # edited")
    cache.closure.cache_clear()
    assert all(cache.code_version(m, root) != after[s] for s, m in STEP_MODULES.items())
    again = {s: cache.code_version(m, root) for s, m in STEP_MODULES.items()}
    _edit(root, "simo.plots", "import", "import os  # edited\nimport")
    assert {s: cache.code_version(m, root) for s, m in STEP_MODULES.items()} == again


def test_code_outside_the_package_has_no_code_version():
    assert cache.code_version("tests.test_cache") == ""
    assert cache.code_version("simo.no_such_module") == ""
    assert len(cache.code_version("simo.train")) == 16


# ------------------------------------------------------------------------------- get_or_compute


def _writer(calls: list, value: float = 1.0):
    def compute(out: Path, partial: Path) -> None:
        calls.append((out, partial))
        cache.save_tensors(out / cache.TENSORS, {"w": torch.full((3,), value)})
        cache.save_json(out / cache.META, {"note": "hi"})
    return compute


def test_get_or_compute_computes_once_then_hits(tmp_cache, monkeypatch):
    monkeypatch.setattr(cache, "STATS", {"hits": 0, "misses": 0})
    calls: list = []
    a = cache.get_or_compute("demo", {"n": 1}, _writer(calls))
    assert len(calls) == 1 and cache.STATS == {"hits": 0, "misses": 1}
    b = cache.get_or_compute("demo", {"n": 1}, _writer(calls))
    assert len(calls) == 1 and cache.STATS == {"hits": 1, "misses": 1}
    assert a.path == b.path == tmp_cache / "demo" / a.key
    assert torch.equal(b.tensors()["w"], torch.ones(3))
    meta = b.meta
    assert meta["note"] == "hi" and meta["step"] == "demo" and meta["key"] == a.key
    assert meta["config"] == {"n": 1}
    # compute wrote into a temporary directory, not the final one
    out, partial = calls[0]
    assert out != a.path and ".tmp-" in out.name and not out.exists()
    assert partial.name == f"{a.key}.partial" and not partial.exists()
    # another config is another artifact
    c = cache.get_or_compute("demo", {"n": 2}, _writer(calls, 2.0))
    assert c.key != a.key and len(calls) == 2
    assert torch.equal(c.tensors()["w"], torch.full((3,), 2.0))


def test_force_recomputes(tmp_cache):
    calls: list = []
    cache.get_or_compute("demo", {"n": 1}, _writer(calls, 1.0))
    art = cache.get_or_compute("demo", {"n": 1}, _writer(calls, 5.0), force=True)
    assert len(calls) == 2
    assert torch.equal(art.tensors()["w"], torch.full((3,), 5.0))


def test_the_computing_module_enters_the_key(tmp_cache):
    calls: list = []
    a = cache.get_or_compute("demo", {"n": 1}, _writer(calls))  # a test's function: no code
    b = cache.get_or_compute("demo", {"n": 1}, _writer(calls), code="simo.train")
    assert a.key != b.key and len(calls) == 2


def test_artifact_tensors_with_prefix(tmp_cache):
    def compute(out, _partial):
        cache.save_tensors(out / cache.TENSORS, {"encoder.a": torch.zeros(1),
                                                 "head.b": torch.ones(2)})
    art = cache.get_or_compute("demo", {}, compute)
    assert set(art.tensors()) == {"encoder.a", "head.b"}
    assert set(art.tensors("encoder.")) == {"a"}
    assert torch.equal(art.tensors("head.")["b"], torch.ones(2))
    assert art.meta["config"] == {}  # no meta written by compute: it is created


def test_failed_compute_leaves_nothing_behind_but_partial(tmp_cache, monkeypatch):
    monkeypatch.setattr(cache, "STATS", {"hits": 0, "misses": 0})
    seen = {}

    def boom(out: Path, partial: Path) -> None:
        cache.save_tensors(out / cache.TENSORS, {"w": torch.ones(1)})
        cache.save_json(partial / "ckpt.json", {"step": 3})
        seen["key"] = partial.name.split(".")[0]
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        cache.get_or_compute("demo", {"n": 1}, boom)
    root = tmp_cache / "demo"
    key = seen["key"]
    assert not (root / key).exists()
    assert not list(tmp_cache.rglob("*.tmp-*"))
    assert (root / f"{key}.partial" / "ckpt.json").is_file()  # kept for resuming
    # the next attempt computes (no half-written hit) and removes the partial state
    calls: list = []
    art = cache.get_or_compute("demo", {"n": 1}, _writer(calls))
    assert len(calls) == 1 and art.key == key and cache.STATS["hits"] == 0
    assert not (root / f"{key}.partial").exists()


def test_incomplete_entry_is_an_error(tmp_cache):
    calls: list = []
    art = cache.get_or_compute("demo", {"n": 1}, _writer(calls))
    (art.path / cache.META).unlink()
    with pytest.raises(CheckpointError) as ei:
        cache.get_or_compute("demo", {"n": 1}, _writer(calls))
    assert "incomplete" in _one_line(ei) and len(calls) == 1


def test_clear_stale_removes_tmp_dirs_only(tmp_cache):
    (tmp_cache / "demo" / "abc.tmp-123").mkdir(parents=True)
    (tmp_cache / "demo" / "abc.partial").mkdir()
    assert cache.clear_stale() == 1
    assert not (tmp_cache / "demo" / "abc.tmp-123").exists()
    assert (tmp_cache / "demo" / "abc.partial").exists()
    assert cache.clear_stale("nothing-here") == 0


# ------------------------------------------------------------------------------- files


def test_save_load_tensors_round_trip(tmp_path):
    t = {"f": torch.randn(2, 3), "i": torch.arange(5), "b": torch.tensor([True, False]),
         "h": torch.randn(4, dtype=torch.float64)}
    base = torch.randn(6)
    t["view"] = base[1:4]  # non-contiguous / shared storage is fine
    t["same"] = base
    p = tmp_path / "sub" / "x.safetensors"
    cache.save_tensors(p, t)
    back = cache.load_tensors(p)
    assert set(back) == set(t)
    for k in t:
        assert back[k].dtype == t[k].dtype and torch.equal(back[k], t[k])
    assert [q.name for q in p.parent.iterdir()] == ["x.safetensors"]  # no temporary left


def test_save_load_json_round_trip(tmp_path):
    obj = {"a": 1.5, "t": torch.tensor([1.0, 2.0]), "s": torch.tensor(3), "p": Path("/x")}
    cache.save_json(tmp_path / "m.json", obj)
    assert cache.load_json(tmp_path / "m.json") == {"a": 1.5, "t": [1.0, 2.0], "s": 3, "p": "/x"}


def _saved(tmp_path) -> Path:
    p = tmp_path / "x.safetensors"
    cache.save_tensors(p, {"a": torch.randn(16, 16), "b": torch.arange(10)})
    return p


def test_missing_tensor_file(tmp_path):
    with pytest.raises(CheckpointError) as ei:
        cache.load_tensors(tmp_path / "nope.safetensors")
    assert "missing" in _one_line(ei)


@pytest.mark.parametrize("cut", [4, 40, -8])
def test_truncated_tensor_file(tmp_path, cut):
    p = _saved(tmp_path)
    raw = p.read_bytes()
    p.write_bytes(raw[:cut])
    with pytest.raises(CheckpointError) as ei:
        cache.load_tensors(p)
    msg = _one_line(ei)
    assert "corrupt" in msg and str(p) in msg


@pytest.mark.parametrize("pos", [0, 8, 9, 20])
def test_bit_flipped_header(tmp_path, pos):
    p = _saved(tmp_path)
    raw = bytearray(p.read_bytes())
    raw[pos] ^= 0x40 if pos else 0x01  # byte 0 is the header length; 8+ is the JSON header
    p.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as ei:
        cache.load_tensors(p)
    assert "corrupt" in _one_line(ei)


def test_garbage_tensor_file(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError) as ei:
        cache.load_tensors(p)
    assert "corrupt" in _one_line(ei)


@pytest.mark.parametrize("content", [b'{"a": 1', b"", b"\xff\xfe\x00garbage"])
def test_corrupt_json(tmp_path, content):
    p = tmp_path / "meta.json"
    p.write_bytes(content)
    with pytest.raises(CheckpointError) as ei:
        cache.load_json(p)
    assert "corrupt" in _one_line(ei)
    with pytest.raises(CheckpointError) as ei:
        cache.load_json(tmp_path / "none.json")
    assert "missing" in _one_line(ei)


def test_corrupt_meta_of_an_artifact(tmp_cache):
    art = cache.get_or_compute("demo", {}, _writer([]))
    (art.path / cache.META).write_text("{oops")
    with pytest.raises(CheckpointError, match="corrupt"):
        _ = art.meta


def test_forced_run_recomputes_each_entry_once_then_reuses_it(tmp_cache, monkeypatch):
    """The runner's ``--force``: within one run (SIMO_RUN) an entry is recomputed once and later
    reads hit it; the next forced run recomputes it again."""
    calls: list = []
    cache.get_or_compute("demo", {"n": 1}, _writer(calls))
    monkeypatch.setenv("SIMO_FORCE", "1")
    monkeypatch.setenv("SIMO_RUN", "run-a")
    cache.get_or_compute("demo", {"n": 1}, _writer(calls))
    cache.get_or_compute("demo", {"n": 1}, _writer(calls))
    assert len(calls) == 2
    monkeypatch.setenv("SIMO_RUN", "run-b")
    cache.get_or_compute("demo", {"n": 1}, _writer(calls))
    assert len(calls) == 3
