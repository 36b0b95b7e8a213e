"""The protocol written once: λ searches in lockstep, the plan's choices, costs, claim, facts."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from simo import analysis, jobs, protocol
from simo.config import load_profile
from simo.merged import MergeSetup

GRID = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def _curve(peak: float, flat: bool = False):
    """A unimodal validation score over λ (flat: every λ ties)."""
    return lambda lam: 0.0 if flat else -abs(lam - peak)


@pytest.fixture
def batches(monkeypatch):
    """Every jobs.prefetch call's job list, in order (nothing is run)."""
    calls: list[list] = []
    monkeypatch.setattr(protocol.jobs, "prefetch",
                        lambda profile, js, desc="": calls.append(list(js)) or 0.0)
    return calls


def test_lockstep_searches_agree_with_one_at_a_time_and_batch_each_round(batches):
    prof = load_profile("smoke")
    cases = {"a": (GRID, 1, _curve(0.6)), "b": (GRID, 2, _curve(0.4)), "c": (GRID, 3, _curve(1.0)),
             "f": (GRID, 3, _curve(0.4)),
             "d": (GRID, 2, _curve(0.0, flat=True)), "e": ([1.0], 1, _curve(0.3))}
    scored: list[tuple[str, float]] = []

    def search(name, grid, stride, score):
        def fake_score(lam):
            # a value is scored only once its job was computed, in an earlier or this round
            assert any(j.args == (name, lam) for b in batches for j in b)
            scored.append((name, lam))
            return score(lam)
        return protocol.Search(tuple(grid), stride, lambda lam: jobs.job(print, name, lam),
                               fake_score)

    first = [jobs.job(print, "reference")]
    found = protocol.run_searches(prof, {k: search(k, *c) for k, c in cases.items()}, first=first)
    alone = {k: analysis.select_on_validation(score, grid, stride)
             for k, (grid, stride, score) in cases.items()}
    assert found == alone
    assert found["d"][0] == 0.0 and found["b"][0] == 0.4  # ties: the smaller λ; coarse-to-fine
    # one batch per round, holding every unfinished search's values of that round
    rounds = {}
    for k, (grid, stride, score) in cases.items():
        got = []
        analysis.select_on_validation(score, grid, stride, prefetch=got.append)
        rounds[k] = got
    assert len(batches) == max(len(r) for r in rounds.values()) == 3
    for i, batch in enumerate(batches):
        want = [(k, v) for k, r in rounds.items() if i < len(r) for v in r[i]]
        assert [j.args for j in batch if j.args != ("reference",)] == want
    assert [j.args for j in batches[0][:1]] == [("reference",)] and all(
        j.args != ("reference",) for b in batches[1:] for j in b)
    assert len(scored) == len(set(scored))  # every value scored once


def test_unique_drops_repeated_steps_of_the_same_setup():
    prof = load_profile("smoke")
    a, b, c = (MergeSetup(prof, [], {}, [], {}, seed) for seed in (0, 0, 1))
    calls = [jobs.job(a.realign, "ties", 0.5, "head"), jobs.job(b.realign, "ties", 0.5, "head"),
             jobs.job(c.realign, "ties", 0.5, "head"), jobs.job(a.realign, "ties", 0.5, "repr"),
             jobs.job(a.original, "ties", 0.5, "val")]
    assert protocol.unique(calls) == [calls[0], calls[2], calls[3], calls[4]]


class FakeSetup:
    """A merge setup whose scores are a function of (method, λ, seed): no model is built."""

    def __init__(self, profile, seed, curves):
        self.profile, self.seed, self.curves, self.tasks = profile, seed, curves, []

    def original(self, method, lam, split):
        if method == "single_task":
            return {"score": 0.0}
        return {"score": self.curves["original"][method](lam) + 0.1 * self.seed}

    def realign(self, method, lam, kind="head"):
        v = {"score": self.curves["realigned"][method](lam) + (kind == "repr") + self.seed}
        return {"val": v, "test": v, "steps": 5, "samples": 4, "seconds": 1.0}

    def realigned(self, method, lam, split, kind="head"):
        return self.realign(method, lam, kind)[split]


def test_run_chooses_original_lambda_per_seed_and_realigned_lambda_on_the_first(
        batches, monkeypatch):
    prof = load_profile("smoke", {"merging.lam_grid": GRID, "realign.select_stride": 2})
    monkeypatch.setattr(protocol, "delta_mtl", lambda m, ref, tasks, conv: m["score"])
    curves = {"original": {"task_arithmetic": _curve(0.2), "ties": _curve(0.8)},
              "realigned": {"task_arithmetic": _curve(0.6), "ties": _curve(0.4)}}
    seeds = (3, 1)
    plan = protocol.Plan(prof, seeds, ("task_arithmetic", "ties"), ("task_arithmetic",),
                         reference="merged", setups={s: FakeSetup(prof, s, curves) for s in seeds})
    called, realigned_search = [], protocol.realigned_search

    def spy(setup, method, convention):
        called.append((method, setup.seed))
        return realigned_search(setup, method, convention)

    monkeypatch.setattr(protocol, "realigned_search", spy)
    (study,) = protocol.run([plan], "test")
    assert called == [("task_arithmetic", 3)]  # searched once, on the first seed
    assert study.lam["original_lambda"] == {("task_arithmetic", 3): 0.2, ("ties", 3): 0.8,
                                            ("task_arithmetic", 1): 0.2, ("ties", 1): 0.8}
    assert study.lam["realigned_lambda"] == {("task_arithmetic", 3): 0.6,
                                             ("task_arithmetic", 1): 0.6}
    ta = curves["realigned"]["task_arithmetic"]
    seen = analysis.select_on_validation(lambda lam: ta(lam) + 3, GRID, 2)[1]  # seed 3: +3
    assert study.scores["realigned_lambda"] == {("task_arithmetic", 3): seen}
    final = [(j.func.__self__.seed, j.func.__name__, *j.args) for j in batches[-1]]
    for s in seeds:  # both protocols, both kinds; ties has no realigned λ
        for kind in ("head", "repr"):
            assert (s, "realign", "task_arithmetic", 0.6, kind) in final
            assert (s, "realign", "task_arithmetic", 0.2, kind) in final
            assert (s, "realign", "ties", 0.8, kind) in final
        assert (s, "original", "ties", 0.8, "test") in final
    assert len(final) == len(set(final))
    assert study.delta("task_arithmetic+repr", 1) == pytest.approx(1 + 1)
    assert study.delta("ties", 1) == pytest.approx(0.1)
    assert study.order == ["joint_mtl", "task_arithmetic", "task_arithmetic+head",
                           "task_arithmetic+repr", "ties", "ties+head", "ties+repr"]


def test_claim_needs_all_three_conditions():
    cost = {"joint_mtl": {"steps": 1200, "samples": 600},
            "m": {"steps": 200, "samples": 150}, "few": {"steps": 200, "samples": 151}}
    delta = {"joint_mtl": 5.0, "m": 2.0, "few": 4.0}
    assert protocol.claim_holds(delta, cost, "m") == {"gap": 3.0, "steps_ratio": 6.0,
                                                      "samples_ratio": 4.0, "holds": True}
    assert not protocol.claim_holds(delta, cost, "few")["holds"]  # 600/151 < 4
    assert not protocol.claim_holds({**delta, "m": 1.9}, cost, "m")["holds"]


def _fake_study(tried: int = 3) -> protocol.Study:
    """Two seeds, one method: costs that differ by seed, a realigned search of ``tried`` values."""
    plan = protocol.Plan(load_profile("smoke"), (0, 1), ("a",), ("a",))
    study = protocol.Study(plan, {}, {"realigned_lambda": {("a", 0): dict.fromkeys(
        range(tried), 0.0)}})
    run = {"head": {"steps": 10, "samples": 32, "seconds": 2.0},
           "repr": {"steps": 20, "samples": 32, "seconds": 5.0}}
    study.mtl = lambda s: SimpleNamespace(meta={"steps": 600 + s, "samples": 96, "seconds": 60.0})
    study.record = lambda key, s, p="realigned_lambda": {k: v * (1 + s) for k, v in
                                                       run[key.split("+")[1]].items()}
    study.single_cost = lambda s: {"steps": 300, "samples": 96, "seconds": 30.0 + s}
    return study


def test_costs_count_the_realignment_alone_and_the_whole_pipeline():
    c = protocol.costs(_fake_study(tried=3))
    assert c["joint_mtl"]["alone"] == c["joint_mtl"]["pipeline"] == {
        "steps": 600.5, "samples": 96.0, "seconds": 60.0}
    assert c["a"]["alone"] == {"steps": 0.0, "samples": 0.0, "seconds": 0.0}
    assert c["a"]["pipeline"] == {"steps": 300.0, "samples": 96.0, "seconds": 30.5}
    # head: itself plus the 2 other values the search tried; repr: plus all 3 of them
    assert c["a+head"]["alone"] == {"steps": 15.0, "samples": 48.0, "seconds": 3.0}
    assert c["a+head"]["pipeline"]["steps"] == 300 + 15 + 2 * 15
    assert c["a+head"]["pipeline"]["seconds"] == pytest.approx(30.5 + 3 + 2 * 3)
    assert c["a+repr"]["pipeline"]["steps"] == 300 + 30 + 3 * 15
    assert c["a+repr"]["pipeline"]["samples"] == 96.0


def _results_02(delta_ta: float, cka: float) -> dict:
    return {"convention": "normalized",
            "lambda": {"original_heads": {"task_arithmetic": 0.4, "weight_average": 1.0},
                       "realigned": {"task_arithmetic": 0.8}},
            "delta_mtl": {"task_arithmetic": delta_ta, "weight_average": -30.0,
                          "task_arithmetic+head_retrain": -2.0},
            "delta_mtl_head_retrain_original_lambda": {"task_arithmetic": -4.0,
                                                       "weight_average": -10.0},
            "delta_mtl_head_retrain_realigned_lambda": {"task_arithmetic": -2.0},
            "head_retrain_ceiling": -1.0,
            "cka": {"depth": [1.0, cka], "normals": [1.0, 0.9]},
            "cosine": {"depth": [1.0, 0.3], "normals": [1.0, 0.5]}}


def test_facts_02_read_the_recovery_and_the_similarities():
    f = protocol.facts_02(_results_02(-20.0, 0.8))
    assert f["recovery"] == ["task_arithmetic: Δ_MTL -20.0 % with the original heads (λ=0.4); "
                             "head realignment recovers 16.0 points with that λ (80% of the loss) "
                             "and 18.0 points with λ re-selected (0.8) (90%)."]
    assert f["cosine_last"] == (0.3, 0.5) and f["lowest"] == "depth" and f["cka_last"] == (0.8, 0.9)
    assert f["reading"].startswith("CKA stays well above cosine")
    assert f["best"] == ("task_arithmetic", -20.0) and f["worst"] == ("weight_average", -30.0)
    g = protocol.facts_02(_results_02(-0.2, 0.55))  # no loss to speak of; CKA near cosine
    assert "lost less than half a point" in g["recovery"][0] and "recovers" not in g["recovery"][0]
    assert g["reading"].startswith("CKA is not clearly above cosine")


def test_facts_03_report_each_protocol_and_the_claim():
    ci = lambda m: {"mean": m, "ci95": [m - 1, m + 1], "seeds": [m, m]}  # noqa: E731
    keys = {"joint_mtl": -5.0, "a": -30.0, "a+head": -9.0, "a+repr": -7.0}
    res = {"delta_mtl": {k: ci(v) for k, v in keys.items()},
           "delta_mtl_original_lambda": {k: ci(v - 1) for k, v in keys.items()},
           "plateau_gain": {"single-task": {"depth": 0.01, "normals": float("nan")},
                            "joint MTL": {"depth": 0.03, "normals": 0.0}},
           "steps": {"joint_mtl": 1200, "a+repr": 100}, "samples": {"joint_mtl": 96, "a+repr": 16},
           "seconds": {"joint_mtl": 60.0, "a+repr": 6.0},
           "pipeline": {"joint_mtl": {"seconds": 60.0}, "a+repr": {"seconds": 90.0}}}
    f = protocol.facts_03(res, ["a"])
    assert f["mtl"] == -5.0 and f["plateau"] == 0.03 and "still improving" in f["plateau_reading"]
    assert [(r["key"], r["realigned"], r["original"], r["gap"]) for r in f["rows"]] == [
        ("a+head", -9.0, -10.0, -4.0), ("a+repr", -7.0, -8.0, -2.0)]
    c = f["claim"]
    assert (c["method"], c["holds"], c["gap"], c["gap_to_mtl"]) == ("a+repr", True, 2.0, -2.0)
    assert (c["steps_ratio"], c["samples_ratio"], c["time_ratio"]) == (12.0, 6.0, 10.0)
    assert f["pipeline_ratio"] == 1.5
    res["seconds"]["a+repr"] = 0.0  # no division by zero
    assert math.isfinite(protocol.facts_03(res, ["a"])["claim"]["time_ratio"])


def test_budget_variants_change_only_the_budget_of_their_kind(monkeypatch):
    prof = load_profile("smoke")  # 5 head steps, 5 adapter steps
    monkeypatch.setattr(protocol, "merge_setup", lambda p, seed: SimpleNamespace(
        realign=lambda m, lam, kind: (p, seed, m, lam, kind)))
    p, seed, *call = protocol.realign_with_budget(prof, 1, "ties", 0.5, "head", 0.33)
    assert (seed, call) == (1, ["ties", 0.5, "head"]) and p.realign.head_steps == 2
    assert p.realign.adapter_steps == 5 and p.finetune == prof.finetune
    p = protocol.realign_with_budget(prof, 0, "ties", 0.5, "repr", 0.01)[0]
    assert (p.realign.adapter_steps, p.realign.head_steps) == (1, 5)  # at least one step
    assert protocol.realign_with_budget(prof, 0, "ties", 0.5, "repr", 1.0)[0] == prof
