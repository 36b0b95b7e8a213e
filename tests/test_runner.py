"""The batch CLI: selection, summary, one-line errors (notebook execution is in test_notebooks)."""
from __future__ import annotations

import pytest

from simo import runner
from simo.__main__ import main
from simo.errors import ConfigError


def test_select_by_prefix_keeps_pipeline_order():
    assert runner.select(["01", "00"]) == ["00_data_and_tasks", "01_pretrain_and_finetune"]
    assert runner.select(None) == list(runner.NOTEBOOKS)


def test_select_unknown_lists_choices():
    with pytest.raises(ConfigError, match="unknown notebook '99'; choose one of: 00_data"):
        runner.select(["99"])


def test_cli_unknown_profile_is_one_line(capsys):
    assert main(["figures", "--profile", "huge"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown profile 'huge'; choose one of:") and "tiny" in err
    assert "\n" not in err


def test_cli_list(capsys):
    assert main(["list"]) == 0
    assert "01_pretrain_and_finetune" in capsys.readouterr().out


def test_summary_table_and_error_line():
    recs = [runner.RunRecord("00_data_and_tasks", "ok", 1.5, 3),
            runner.RunRecord("01_pretrain_and_finetune", "failed", 2.0, 0, "cell 4: DataError: x")]
    text = runner.summary(recs)
    assert "00_data_and_tasks" in text and "total" in text and "3.5" in text
    assert text.splitlines()[-1] == "error: 01_pretrain_and_finetune failed in cell 4: DataError: x"


@pytest.mark.parametrize("text,value", [("3", 3), ("0.5", 0.5), ("null", None),
                                        ("[a, b]", ["a", "b"]), ("depth,normals", "depth,normals")])
def test_parse_value(text, value):
    assert runner.parse_value(text) == value


def test_every_notebook_declares_its_dependencies_in_pipeline_order():
    assert set(runner.DEPENDS) == set(runner.NOTEBOOKS)
    order = list(runner.NOTEBOOKS)
    for nb, deps in runner.DEPENDS.items():
        assert all(order.index(d) < order.index(nb) for d in deps), nb


def test_parallel_run_starts_a_notebook_only_after_its_dependencies(monkeypatch):
    import threading
    import time

    log, lock = [], threading.Lock()

    def fake(nb, profile, params=None, **kw):
        with lock:
            log.append(("start", nb))
        time.sleep(0.05)
        with lock:
            log.append(("end", nb))
        return runner.RunRecord(nb, "ok", 0.05, 0)

    monkeypatch.setattr(runner, "run_notebook", fake)
    recs = runner.run_all("smoke", jobs=3)
    assert [r.notebook for r in recs] == list(runner.NOTEBOOKS)
    for nb, deps in runner.DEPENDS.items():
        for d in deps:
            assert log.index(("end", d)) < log.index(("start", nb)), (d, nb)
    starts = [i for i, e in enumerate(log) if e[0] == "start" and e[1] in
              ("02_misalignment", "03_realignment", "04_task_relationships")]
    first_end = min(log.index(("end", nb)) for nb in ("02_misalignment", "03_realignment"))
    assert sorted(starts)[1] < first_end, "independent notebooks did not overlap"


def test_a_failure_stops_launching_dependents(monkeypatch):
    def fake(nb, profile, params=None, **kw):
        return runner.RunRecord(nb, "failed" if nb.startswith("01") else "ok", 0.0, 0, "x")

    monkeypatch.setattr(runner, "run_notebook", fake)
    assert [r.notebook for r in runner.run_all("smoke")] == ["00_data_and_tasks",
                                                              "01_pretrain_and_finetune"]


def test_summary_counts_cache_hits_and_force_recomputes(tmp_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "HEARTBEAT", 1.0)
    first = runner.run_all("smoke", only=["00"])[0]
    assert first.status == "ok" and first.misses > 0
    beats = [ln for ln in capsys.readouterr().out.splitlines() if "elapsed" in ln]
    assert len(beats) >= first.seconds / 1.0 - 3, "a running notebook prints a line per heartbeat"
    assert all(ln.startswith("[simo] 00_data_and_tasks: cell ") for ln in beats)
    assert "no ETA yet" in beats[0]
    again = runner.run_all("smoke", only=["00"])[0]
    assert again.misses == 0 and again.hits > 0
    assert (tmp_cache / "timings" / "smoke" / "00_data_and_tasks.json").is_file()
    forced = runner.run_all("smoke", only=["00"], force=True)[0]
    assert forced.misses == first.misses
    assert "cache hits" in runner.summary([again]).splitlines()[0]
    assert not list((tmp_cache / "events").glob("*.jsonl")), "each run removes its event log"


def test_force_holds_for_one_run_and_leaves_the_callers_environment_as_it_was(monkeypatch):
    """``--force`` is set as SIMO_FORCE under a fresh SIMO_RUN id, even for two runs in the same
    second (the cache recomputes each entry once per run id: test_cache), and nothing outlives
    the run."""
    import os

    seen: list[tuple] = []

    def fake(nb, *a, **k):
        seen.append((os.environ.get("SIMO_FORCE"), os.environ.get("SIMO_RUN")))
        return runner.RunRecord(nb, "ok", 0.0, 0)

    monkeypatch.setattr(runner, "run_notebook", fake)
    monkeypatch.delenv("SIMO_FORCE", raising=False)
    monkeypatch.delenv("SIMO_RUN", raising=False)
    monkeypatch.delenv("SIMO_PROGRESS", raising=False)
    runner.run_all("smoke", only=["00"], force=True)
    runner.run_all("smoke", only=["00"], force=True)
    runner.run_all("smoke", only=["00"])
    assert seen[0][0] == seen[1][0] == "1" and seen[2][0] is None
    assert seen[0][1] and seen[1][1] and seen[0][1] != seen[1][1], "each run gets its own id"
    assert not {"SIMO_FORCE", "SIMO_RUN", "SIMO_PROGRESS"} & set(os.environ)


def test_watch_relays_the_newest_progress_bar_and_estimates_from_last_timings(tmp_cache):
    w = runner.Watch("00_data_and_tasks", "smoke", echo=False)
    w.started(0, 3)
    w.write("finetune depth:  10%|#         | 6/60 [00:01<00:09]\rfinetune depth:  20%|##  | 12/60")
    w.write("a warning without a bar\n")
    assert w.bar.startswith("finetune depth:  20%|##")
    assert "cell 1/3" in w.line() and "no ETA yet" in w.line() and w.bar in w.line()
    w.finished(0)
    w.started(1, 3)
    w.finished(1)
    w.started(2, 3)
    w.finished(2)
    w.save_timings()
    w2 = runner.Watch("00_data_and_tasks", "smoke", echo=False)
    assert w2.last is not None and len(w2.last) == 3
    w2.last = [10.0, 20.0, 30.0]
    w2.started(1, 3)
    assert 49.0 < w2.eta() <= 50.0  # what is left of cell 2 (20 s) + cell 3 (30 s)
    assert "ETA 49s" in w2.line() or "ETA 50s" in w2.line()
