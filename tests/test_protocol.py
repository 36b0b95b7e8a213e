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

    def __init__(self, profile, seed, curves, lr_gain=0.0):
        self.profile, self.seed, self.curves, self.tasks = profile, seed, curves, []
        self.lr_gain = lr_gain  # added to representation realignment's score (its lr's effect)

    def original(self, method, lam, split):
        if method == "single_task":
            return {"score": 0.0}
        return {"score": self.curves["original"][method](lam) + 0.1 * self.seed}

    def realign(self, method, lam, kind="head"):
        v = {"score": self.curves["realigned"][method](lam) + (kind == "repr") * (1 + self.lr_gain)
             + self.seed}
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

    def spy(setup, method, convention, kind="head"):
        called.append((method, setup.seed, kind))
        return realigned_search(setup, method, convention, kind)

    base = prof.realign.adapter_lr  # adapters score best at 3× the profile's lr (k = 1: an edge)
    lr_setups = {lr: {s: FakeSetup(prof, s, curves, -abs(math.log(lr / base, 3) - 1))
                      for s in seeds} for lr in {protocol.adapter_lr(prof, k) for k in range(-3, 4)}}
    monkeypatch.setattr(protocol, "lr_setup", lambda p, s, lr: lr_setups[lr][s])
    monkeypatch.setattr(protocol, "realigned_search", spy)
    (study,) = protocol.run([plan], "test")
    # searched once, on the first seed: heads, then the adapters at their chosen lr
    assert called == [("task_arithmetic", 3, "head"), ("task_arithmetic", 3, "repr")]
    assert study.lr == {"task_arithmetic": protocol.adapter_lr(prof, 1)}
    assert sorted(study.lr_scores["task_arithmetic"]) == [-1.0, 0.0, 1.0, 2.0]  # widened past 1
    assert study.lam["original_lambda"] == {("task_arithmetic", 3): 0.2, ("ties", 3): 0.8,
                                            ("task_arithmetic", 1): 0.2, ("ties", 1): 0.8}
    assert study.lam["realigned_lambda"] == {
        ("task_arithmetic", 3): 0.6, ("task_arithmetic", 1): 0.6,
        ("task_arithmetic+repr", 3): 0.6, ("task_arithmetic+repr", 1): 0.6}
    assert study.setup_for("task_arithmetic+repr", 1) is lr_setups[study.lr["task_arithmetic"]][1]
    assert study.setup_for("ties+repr", 1) is plan.setups[1]  # ties' adapters were not tuned
    ta = curves["realigned"]["task_arithmetic"]
    seen = analysis.select_on_validation(lambda lam: ta(lam) + 3, GRID, 2)[1]  # seed 3: +3
    assert study.scores["realigned_lambda"] == {("task_arithmetic", 3): seen,
                                                ("task_arithmetic+repr", 3): {
                                                    v: x + 1 for v, x in seen.items()}}
    final = [(j.func.__self__.seed, j.func.__name__, *j.args) for j in batches[-1]]
    for s in seeds:  # both protocols, both kinds; ties has no realigned λ
        for kind in ("head", "repr"):
            assert (s, "realign", "task_arithmetic", 0.6, kind) in final
            assert (s, "realign", "task_arithmetic", 0.2, kind) in final
            assert (s, "realign", "ties", 0.8, kind) in final
        assert (s, "original", "ties", 0.8, "test") in final
    assert len(final) == len(set(final))
    assert study.delta("task_arithmetic+repr", 1) == pytest.approx(1 + 1)  # at the best lr
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
