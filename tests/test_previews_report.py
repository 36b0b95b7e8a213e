"""Checks of simo.previews.report on small synthetic grids: no training, metrics made up so that
their task points are known, then judged, averaged, timed and put into words."""
from __future__ import annotations

import numpy as np
import pytest

from simo.previews import (KINDS, SGD_LRS, TRUTHS, Kind, compare, corners, facts, report, shape,
                           task_points)

TRUE_SEG = [60.0, 90.0, 100.0, 95.0, 100.0]  # peaked over the 5 α of n_alpha = 5
TRUE_DEPTH = [100.0, 98.0, 96.0, 80.0, 50.0]  # monotone
# SGD's truth moves more with α (interior means 82.5, 90, 75: range 15 vs AdamW's 10.5)
SGD_TRUTH = {"segmentation": [40.0, 70.0, 95.0, 90.0, 100.0],
             "depth": [100.0, 95.0, 85.0, 60.0, 30.0]}


@pytest.fixture(scope="module")
def st():
    from conftest import tiny_profile

    return report.study(tiny_profile(**{"previews.n_alpha": 5}))


def metrics_of(st, pts: dict[str, float]) -> dict:
    """Metrics whose task points against a reference of 1.0 are ``pts[task]``."""
    return {t.name: {m.name: pts[t.name] / 100 if m.higher_is_better else 100 / pts[t.name]
                     for m in t.metrics} for t in st.tasks}


def ones(st) -> dict:
    return {t.name: {m: 1.0 for m in t.metric_names} for t in st.tasks}


def grid_of(st, curves: dict[str, list[float]], shift: float = 0.0, seconds=(0.1, 1.0, 2.0),
            prior: float = 1e-3) -> dict:
    """A preview grid whose original heads read ``curves`` − 10 and realigned ones ``curves``,
    both shifted by ``shift`` points."""
    per = lambda d: [metrics_of(st, {t: curves[t][i] + shift - d for t in curves})  # noqa: E731
                     for i in range(len(st.alphas))]
    return {"alphas": st.alphas, "original": per(10.0), "realigned": per(0.0),
            "prior_precision": prior,
            "seconds": dict(zip(("merge", "evaluate", "realign"), seconds))}


def close_curves(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-12)


TRUTH = {"segmentation": TRUE_SEG, "depth": TRUE_DEPTH}


def record(st, shifts: dict[str, list[float]], sens=None, seconds=(0.1, 1.0, 2.0),
           gt_train: float = 100.0, truth: dict | None = None) -> dict:
    """A results record as notebook 05 builds it, from previews = AdamW's truth + a shift per
    kind and grid seed (``shifts[kind][j]`` for the j-th seed of that kind)."""
    ref = ones(st)
    truth = truth or {"adamw": TRUTH, "ivon": {t: [x - 1 for x in c] for t, c in TRUTH.items()},
                      "sgd": SGD_TRUTH}
    grids = {m: {s: {**grid_of(st, TRUTH, shifts[m][j], seconds),
                     "components": [{t: int(KINDS[m].mixture and a[0] > 0.5) for t in st.names}
                                    for a in st.alphas]}
                 for j, s in enumerate(ss)} for m, ss in st.kinds.items()}
    pred = report.predictions(st, ref, grids)
    summ = report.summary(st, report.verdicts(st, pred, truth))
    cost = report.cost_of(st, grids, gt_train, {"adamw": 10.0, "ivon": 12.0})
    return {"tasks": st.names, "alphas": [list(a) for a in st.alphas], **summ, **cost,
            "truth_shapes": {o: {t: shape(c) for t, c in v.items()}
                             for o, v in truth.items()},
            "sensitivity": sens or {},
            "curves": {h: {m: {str(s): c for s, c in pred[h][m].items()} for m in st.kinds}
                       for h in report.HEADS},
            "truth": truth, "reference": ref, "budget": report.budget(st),
            "sgd_lr": {"lrs": list(SGD_LRS), "val_points": [80.0, 85.0, 84.0], "lr": SGD_LRS[1],
                       "edge": False},
            "truth_motion": report.truth_motion(st.alphas, truth),
            "components": report.mixture_components(st, grids)}


# ------------------------------------------------------------------------------ the study
def test_study_takes_kinds_from_the_registry(st, monkeypatch):
    assert st.names == ["segmentation", "depth"] and len(st.alphas) == 5
    for m, k in KINDS.items():
        assert st.kinds[m] == (st.seeds[:1] if k.mixture else st.seeds)
    assert st.labels["multi_ivon_hess"].endswith("(K=2)") and "(gradsq)" in st.labels["adamw_sg"]
    monkeypatch.setitem(KINDS, "mix_sg", Kind("adamw", "sg", mixture=True))
    other = report.study(st.profile)
    assert other.kinds["mix_sg"] == st.seeds[:1]
    assert other.labels["mix_sg"] == "mix_sg (gradsq) (K=2)"


def test_jobs_cover_every_run_and_grid(st):
    train = report.training_jobs(st)
    assert len(train) == (len(SGD_LRS) + 2 * len(st.seeds) * len(st.names)
                          + len(TRUTHS) * len(st.gt_seeds) * len(st.alphas))
    # SGD's learning-rate choice runs first (every SGD truth waits for it), its α grid last
    assert [j.args[3] for j in train[:len(SGD_LRS)]] == list(SGD_LRS)
    assert all(j.keywords["optimizer"] == "sgd" for j in train[-len(st.alphas):])
    assert len(report.grid_jobs(st)) == sum(len(ss) for ss in st.kinds.values())


# ------------------------------------------------------------------------------ judging
def test_mean_points_averages_seeds(st):
    runs = [[metrics_of(st, {"segmentation": 50.0 + i, "depth": 80.0}) for i in range(5)],
            [metrics_of(st, {"segmentation": 70.0 + i, "depth": 40.0}) for i in range(5)]]
    out = report.mean_points(st, ones(st), runs)
    close_curves(out, {"segmentation": [60.0 + i for i in range(5)], "depth": [60.0] * 5})


def test_predictions_verdicts_summary(st):
    shifts = {"isotropic": [4.0, 6.0], "adamw_sg": [3.0, 3.0], "ivon_hess": [0.0, 2.0],
              "multi_ivon_hess": [1.0]}
    rec = record(st, shifts)
    for m, sh in shifts.items():
        # every α is shifted alike: MAE is the shift (realigned) or 10 − shift (original heads)
        np.testing.assert_allclose(rec["mae_seeds"]["realigned"][m], [abs(x) for x in sh],
                                   atol=1e-9)
        np.testing.assert_allclose(rec["mae_seeds"]["original"][m], [abs(x - 10) for x in sh])
        assert rec["quality"][m]["depth"]["mae"] == pytest.approx(float(np.mean(sh)), abs=1e-9)
        # against IVON finetuning (the truth − 1 point)
        assert rec["quality_vs_ivon"][m]["depth"]["mae"] == pytest.approx(float(np.mean(sh)) + 1)
        assert rec["quality"][m]["segmentation"]["spearman"] == pytest.approx(1.0)
        # a constant shift keeps the best α: no regret in any reading
        assert rec["regret"][m] == rec["regret_original_heads"][m] == 0.0
        assert len(rec["regret_seeds"]["vs_ivon"][m]) == len(st.kinds[m])
        # the headline: interior MAE (a constant shift: the shift), the corners apart
        assert rec["mae_interior"][m] == pytest.approx(float(np.mean(sh)), abs=1e-9)
        assert rec["mae_corners"][m] == pytest.approx(float(np.mean(sh)), abs=1e-9)
        assert rec["mae_interior_original_heads"][m] == pytest.approx(
            float(np.mean([abs(x - 10) for x in sh])))
        # against SGD: |AdamW's truth + shift − SGD's| over the interior α (indices 1–3)
        vs_sgd = np.mean([np.mean([abs(TRUTH[t][i] + x - SGD_TRUTH[t][i]) for t in TRUTH
                                   for i in (1, 2, 3)]) for x in sh])
        assert rec["mae_interior_vs_sgd"][m] == pytest.approx(float(vs_sgd))
        assert len(rec["mae_corners_seeds"]["original_vs_sgd"][m]) == len(st.kinds[m])
    # kinds best first by interior MAE, each with its seed range (ties keep the registry order)
    order = rec["ordering"]["realigned"]
    assert [r["kind"] for r in order] == ["ivon_hess", "multi_ivon_hess", "adamw_sg", "isotropic"]
    assert order[0]["range"] == [0.0, 2.0] and order[-1]["mae_interior"] == pytest.approx(5.0)
    reversed_ = [r["kind"] for r in rec["ordering"]["original"]]  # 10 − shift: reversed
    assert reversed_[:2] == ["isotropic", "adamw_sg"]  # then both IVON kinds at 9 points
    assert set(rec["ordering"]) == set(report.READINGS)
    # a preview above the truth promises more than finetuning delivers
    assert rec["hypervolume_gap"]["isotropic"] < 0
    assert set(rec) >= {"quality_original_heads", "hypervolume_gap_vs_ivon", "mae_interior_seeds"}
    table = report.quality_table(st, rec)
    assert len(table) == 2 * len(st.kinds)
    assert table.loc[(st.labels["adamw_sg"], "realigned"), "MAE depth"] == pytest.approx(3.0)
    head = report.headline_table(st, rec)
    assert len(head) == len(st.kinds)
    iso = head.loc[st.labels["isotropic"]]
    assert iso["interior MAE, realigned heads vs AdamW"] == pytest.approx(5.0)
    assert iso["corner MAE, original heads vs AdamW"] == pytest.approx(5.0)
    assert iso["regret vs SGD"] == pytest.approx(0.0)


def test_corners_are_judged_apart_from_the_interior(st):
    # a preview exact in the interior and 20 points off at both corners (α_t = 0 for a task)
    off = {t: [c[0] - 20.0, *c[1:-1], c[-1] + 20.0] for t, c in TRUTH.items()}
    pts = task_points(grid_of(st, off)["realigned"], ones(st), st.tasks)
    q = compare(pts, TRUTH, st.alphas)["quality"]
    assert report.interior(st.alphas) == [1, 2, 3] and corners(st.alphas) == [0, 4]
    for t in TRUTH:
        assert q[t]["mae_interior"] == pytest.approx(0.0, abs=1e-9)
        assert q[t]["mae_corners"] == pytest.approx(20.0)
        assert q[t]["mae"] == pytest.approx(8.0)  # 2 of the 5 α are 20 points off


def test_truth_motion_says_which_truth_moves(st):
    flat = {"segmentation": [60.0, 90.0, 90.5, 91.0, 100.0], "depth": [100.0, 90.0] + [90.0] * 3}
    m = report.truth_motion(st.alphas, {"adamw": flat, "sgd": SGD_TRUTH})
    # interior means: AdamW 90, 90.25, 90.5 (range 0.5); SGD 82.5, 90, 75 (range 15)
    assert m["adamw"]["flat"] and m["adamw"]["range"] == pytest.approx(0.5)
    assert m["adamw"]["best"] == list(st.alphas[3])
    assert not m["sgd"]["flat"] and m["sgd"]["range"] == pytest.approx(15.0)
    assert m["sgd"]["best"] == list(st.alphas[2]) and report.judged_truth(m) == "sgd"
    shifts = {m_: [0.0] * len(ss) for m_, ss in st.kinds.items()}
    f = facts.facts(record(st, shifts, truth={"adamw": flat, "ivon": flat, "sgd": SGD_TRUTH}))
    assert "AdamW 90.0–90.5 (range 0.5, best at α = [0.75, 0.25]): flat" in f["truth_motion"]
    assert "SGD (lr 0.03) 75.0–90.0 (range 15.0" in f["truth_motion"]
    assert f["truth_motion"].endswith("regrets are judged on SGD.")
    assert "judged on SGD finetuning" in f["regret"] and "AdamW 0.25 (flat)" in f["regret"]
    f = facts.facts(record(st, shifts, truth={o: flat for o in TRUTHS}))
    assert "every truth is flat (range < 2 points)" in f["truth_motion"]


def test_regret_of_a_wrong_pick(st):
    ref, truth = ones(st), {"adamw": TRUTH}
    wrong = {"segmentation": [60.0, 100.0, 80.0, 80.0, 100.0], "depth": TRUE_DEPTH}
    pred = {h: {"ivon_hess": {0: task_points(grid_of(st, wrong)[h], ref, st.tasks)}}
            for h in report.HEADS}
    v = compare(pred["realigned"]["ivon_hess"][0], truth["adamw"], st.alphas)
    true_mean = report.mean_curve(TRUTH)
    # picks α index 1 (mean 99) over the truth's best interior index 2 (mean 98)
    assert v["pick"] == 1 and v["regret"] == pytest.approx(true_mean[2] - true_mean[1])


def test_sweep_records_each_value(st):
    ref, truth = ones(st), {"adamw": TRUTH}
    flat = {"segmentation": [80.0] * 5, "depth": [80.0] * 5}
    readings = [(0.1, False, grid_of(st, TRUTH)["realigned"]),
                (1.0, True, grid_of(st, flat, shift=2.0)["realigned"])]
    rec, rows = report.sweep(st, ref, truth, "previews.prior_rel", readings)
    assert rec["values"] == [0.1, 1.0] and rec["method"] == report.TARGET
    assert rec["regret"][0] == pytest.approx(0.0) and rec["regret"][1] > 0
    assert rec["pick"] == [list(st.alphas[2]), list(st.alphas[1])]  # a flat preview: first interior
    assert rec["mae"][0] == pytest.approx(0.0)
    assert [r[1] for r in rows] == [False, True]
    table = report.sensitivity_table({"prior": rec})
    assert list(table["setting"]) == ["prior = 0.1", "prior = 1.0"]


def test_cost_counts_the_runs_behind_each_kind(st):
    rec = record(st, {m: [0.0] * len(ss) for m, ss in st.kinds.items()},
                 seconds=(0.5, 3.0, 4.0), gt_train=96.0)
    gt = 96.0 + 3.0
    assert rec["cost_seconds"]["ground_truth_grid"] == pytest.approx(gt)
    for m, k in KINDS.items():
        assert rec["cost_ratio"][m] == pytest.approx(4.5 / gt)
        assert rec["cost_ratio_original_heads"][m] == pytest.approx(3.5 / gt)
        n_runs = st.profile.previews.components if k.mixture else 1
        per = {"adamw": 10.0, "ivon": 12.0}[k.optimizer]
        assert rec["cost_ratio_with_task_runs"][m] == pytest.approx((4.5 + n_runs * per) / gt)
    table = report.cost_table(st, rec)
    assert table.loc[st.labels["ivon_hess"], "realigned heads (s)"] == pytest.approx(4.5)


# ------------------------------------------------------------------------------ what we saw
def test_facts_follow_the_record(st):
    good = {"multi_ivon_hess": [1.0], "ivon_hess": [2.0, 2.2], "adamw_sg": [3.0, 3.1],
            "isotropic": [4.0, 4.5]}
    f = facts.facts(record(st, good, seconds=(0.01, 0.1, 0.2)))
    paper = "The paper's ordering (isotropic worst, then AdamW-SG, IVON-Hess, MultiIVON best)"
    assert f["mae_realigned"].startswith("Interior MAE with heads realigned on the preview, "
                                         "against AdamW finetuning")
    assert f"{paper} holds" in f["mae_realigned"] and "overlap" not in f["mae_realigned"]
    assert f"{paper} does not hold" in f["mae_original"]  # 10 − shift reverses the ranking
    assert "against SGD finetuning" in f["mae_vs_sgd"] and "mae_original_vs_sgd" in f
    assert f["regret"].startswith("IVON-Hess regret with realigned heads, judged on SGD "
                                  "finetuning: 0.00 points")
    assert "target ≤ 2: met" in f["regret"]
    assert "target ≤ 1/20 = 0.05: met" in f["cost"]
    assert "settings" not in f  # no sweep in the record
    assert "depth (monotone)" in f["spearman_uninformative"]
    assert f["spearman_peaked"].startswith("Peaked truth (segmentation)")
    assert "segmentation 60 points, depth 50 points" in f["corners"]  # the α_t = 0 corners
    assert "MultiIVON-Hess (K=2) 1.00" in f["corners"].split(" (interior: ")[0]
    assert "0.03, the best mean validation points" in f["sgd_lr"] and "inside" in f["sgd_lr"]
    assert "segmentation seed 0's at 3 α, seed 1's at 2 α" in f["mixture_heads"]
    edge = {**record(st, good), "sgd_lr": {"lrs": [0.01, 0.03, 0.1],
                                           "val_points": [1.0, 2.0, 3.0], "lr": 0.1, "edge": True}}
    assert "at the edge of the grid" in facts.facts(edge)["sgd_lr"]

    bad = {"multi_ivon_hess": [5.0], "ivon_hess": [1.0, 6.0], "adamw_sg": [3.0, 3.1],
           "isotropic": [2.0, 2.5]}
    f = facts.facts(record(st, bad, seconds=(1.0, 5.0, 9.0)))
    assert "does not hold (best isotropic (weighted avg.), worst MultiIVON-Hess (K=2))" in f[
        "mae_realigned"]
    assert "Neighbours whose seed ranges overlap" in f["mae_realigned"]
    assert "target ≤ 1/20 = 0.05: not met" in f["cost"]


def test_facts_on_settings_and_regret(st):
    ref, truth = ones(st), {"adamw": TRUTH, "sgd": SGD_TRUTH}
    wrong = {"segmentation": [60.0, 100.0, 80.0, 80.0, 100.0], "depth": TRUE_DEPTH}
    sweeps = {}
    for name, curves in (("prior", [TRUTH, TRUTH]), ("steps", [TRUTH, wrong])):
        sweeps[name], _ = report.sweep(st, ref, truth, f"previews.{name}",
                                       [(v, v == 1, grid_of(st, c)["realigned"])
                                        for v, c in zip((1, 2), curves)])
    rec = record(st, {m: [0.0] * len(ss) for m, ss in st.kinds.items()}, sens=sweeps)
    f = facts.facts(rec)
    # judged on SGD (it moves most): the wrong curve picks α 1, SGD's best is α 2 (90 − 82.5)
    assert sweeps["steps"]["regret_vs_sgd"] == pytest.approx([0.0, 7.5])
    assert sweeps["steps"]["regret"] == pytest.approx([0.0, 4.0])  # AdamW's: 98 − 94
    assert f["settings"].startswith("Settings (IVON-Hess, seed 0, realigned heads, regret against "
                                    "SGD): prior: 1 → regret 0.00, 2 → regret 0.00; steps: 1 → "
                                    "regret 0.00, 2 → regret 7.50")
    assert "the picked α moves" in f["settings"]
    same = {"prior": sweeps["prior"]}
    f_same = facts.facts({**rec, "sensitivity": same})
    assert "every setting picks the same α [0.5, 0.5]" in f_same["settings"]
    # the regret target is judged on the record's regret, whatever produced it
    over = {**rec, "regret_vs_sgd": {**rec["regret_vs_sgd"], report.TARGET: 2.5}}
    assert "target ≤ 2: not met" in facts.facts(over)["regret"]
