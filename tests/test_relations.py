"""Task relationships over seeds and groups (notebook 04), on small hand-made matrices."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from simo import analysis, relations
from simo.tasks import get_tasks

NAMES = ["segmentation", "depth", "normals", "edges"]


def matrix(values: dict[tuple[str, str], float], names=NAMES) -> dict:
    """A full matrix with NaN on the diagonal and the given off-diagonal entries."""
    return {s: {t: math.nan if s == t else values[s, t] for t in names} for s in names}


def ramp(names=NAMES, sign: float = 1.0) -> dict:
    """Off-diagonal entries 1, 2, 3, … in :func:`analysis.off_diagonal` order (times ``sign``)."""
    ordered = [(s, t) for s in names for t in names if s != t]
    return matrix({p: sign * (i + 1) for i, p in enumerate(ordered)}, names)


def test_mean_matrix_averages_seeds_and_leaves_the_diagonal_empty():
    a, b = ramp(), ramp(sign=3.0)
    mean = relations.mean_matrix({0: a, 1: b}, NAMES)
    assert mean["depth"]["normals"] == pytest.approx((a["depth"]["normals"] + b["depth"]["normals"]) / 2)
    assert mean["segmentation"]["edges"] == pytest.approx(2 * a["segmentation"]["edges"])
    assert all(math.isnan(mean[n][n]) for n in NAMES)


def test_rank_agreement_is_one_value_per_seed():
    offline = ramp()
    rho = relations.rank_agreement(offline, {3: ramp(sign=2.0), 7: ramp(sign=-1.0)}, NAMES)
    assert list(rho) == [3, 7]
    assert rho[3] == pytest.approx(1.0)  # same ordering, other scale
    assert rho[7] == pytest.approx(-1.0)  # reversed ordering


def test_correlation_ci_is_clipped_to_minus_one_one():
    values = [1.0, 0.2]  # two seeds: the t-interval is far wider than [-1, 1]
    raw = analysis.mean_ci(values)
    assert raw["ci95"][0] < -1.0 and raw["ci95"][1] > 1.0
    r = relations.correlation_ci(values)
    assert r["ci95"] == [-1.0, 1.0]
    assert r["mean"] == pytest.approx(0.6) and r["seeds"] == values
    tight = relations.correlation_ci([0.5, 0.52, 0.48])
    assert tight["ci95"] == pytest.approx(analysis.mean_ci([0.5, 0.52, 0.48])["ci95"])


def test_mean_over_reads_only_the_pairs_of_its_group():
    m = matrix({(s, t): (10.0 if "segmentation" in (s, t) else 1.0) for s in NAMES for t in NAMES
                if s != t})
    m["depth"]["normals"] = 4.0
    m["normals"]["edges"] = math.nan  # skipped, not propagated
    geo = relations.mean_over(m, NAMES, "geometric pairs")
    assert geo == pytest.approx((4.0 + 1.0 * 4) / 5)  # 6 geometric ordered pairs, one NaN
    assert relations.mean_over(m, NAMES, "pairs with segmentation") == pytest.approx(10.0)
    three = ["depth", "normals", "edges"]
    assert math.isnan(relations.mean_over(m, three, "pairs with segmentation"))  # no such pair
    with pytest.raises(ValueError, match="unknown task group"):
        relations.mean_over(m, NAMES, "semantic pairs")


def test_group_means_has_one_column_per_matrix_and_one_row_per_group():
    out = relations.group_means({"M": ramp(), "A (%)": ramp(sign=-1.0)}, NAMES)
    assert list(out) == ["M", "A (%)"]
    assert all(list(col) == list(relations.GROUPS) for col in out.values())
    assert out["A (%)"]["geometric pairs"] == pytest.approx(-out["M"]["geometric pairs"])


def test_geometric_keeps_the_order_of_the_names():
    assert relations.geometric(["edges", "segmentation", "depth"]) == ["edges", "depth"]


@pytest.mark.parametrize("ci, words", [([0.1, 0.6], "agrees"), ([-0.6, -0.1], "against"),
                                       ([-0.2, 0.4], "random ordering")])
def test_verdict_follows_the_interval(ci, words):
    assert words in relations.verdict(ci)


def test_pair_affinities_compare_each_pair_with_its_tasks_alone_per_seed(monkeypatch):
    tasks = get_tasks(["depth", "edges"])
    alone = {"depth": {"depth": {"abs_err": 0.2, "rel_err": 0.1}},
             "edges": {"edges": {"f1": 0.5, "l1": 0.1}}}
    joint = {0: {"depth": {"abs_err": 0.25, "rel_err": 0.1}, "edges": {"f1": 0.55, "l1": 0.1}},
             1: {"depth": {"abs_err": 0.2, "rel_err": 0.1}, "edges": {"f1": 0.4, "l1": 0.1}}}
    calls = []

    def fake_finetuned(cfg, task, seed):
        calls.append((cfg, task if isinstance(task, str) else tuple(task), seed))
        test = joint[seed] if isinstance(task, list) else alone[task]
        return SimpleNamespace(meta={"test": test})

    monkeypatch.setattr(relations.steps, "finetuned", fake_finetuned)
    out = relations.pair_affinities("pair-cfg", [("depth", "edges")], tasks, [0, 1])
    assert set(out) == {0, 1}
    assert out[0]["edges"]["depth"] == pytest.approx(-10.0)  # depth worse beside edges
    assert out[0]["depth"]["edges"] == pytest.approx(5.0)  # edges better beside depth
    assert out[1]["edges"]["depth"] == pytest.approx(0.0)
    assert out[1]["depth"]["edges"] == pytest.approx(-10.0)
    assert {c[0] for c in calls} == {"pair-cfg"}  # pairs and singles share one budget
    assert ("pair-cfg", ("depth", "edges"), 1) in calls and ("pair-cfg", "edges", 1) in calls


def results_of(names=NAMES, spearman=(-0.5, 0.3), ci=((-0.7, -0.3), (-0.1, 0.7)),
               pair_steps=300) -> dict:
    """A results dict of notebook 04's shape, with hand-picked numbers."""
    aff = ramp(names, sign=-1.0)  # every pair competes; the first ordered pair least
    geo_m, seg_m = relations.GROUPS
    return {
        "tasks": names,
        "transfer": ramp(names),
        "pair_affinity": aff,
        "rank_correlation": {"spearman": spearman[0], "ci95": list(ci[0])},
        "rank_correlation_pretrained_heads": {"spearman": spearman[1], "ci95": list(ci[1])},
        "task_vector_cosine": ramp(names, sign=0.01),
        "geometric_vs_segmentation": {"M (original heads)": {geo_m: 0.2, seg_m: 0.1},
                                      "A (%)": {geo_m: -5.0, seg_m: -2.0}},
        "pair_budget": {"head_steps": 50, "steps": pair_steps, "seeds": [0, 1, 2]},
    }


def test_facts_tell_the_verdicts_groups_and_extremes():
    lines = relations.facts(results_of(), single_steps=(50, 600))
    assert lines[0].startswith("- Transfer read with original heads: Spearman -0.50 [-0.70, -0.30]")
    assert "3 seeds, 12 ordered pairs" in lines[0] and "against the ground truth" in lines[0]
    assert "random ordering" in lines[1]
    assert "uses heads on θ0 (+0.30 vs -0.50)" in lines[2]
    assert "M (original heads): geometric pairs +0.200" in lines[3] and "tasks do transfer" in lines[3]
    assert "A (%)" in lines[4] and "do not transfer" in lines[4]
    # ramp: column means 7, 6.7, 6.3, 6 (segmentation first); mean A is -(1 + … + 12) / 12
    assert lines[5].startswith("  Why, in numbers") and "is segmentation (" in lines[5]
    assert "(mean A -6.5 %)" in lines[5]
    assert "helps most: depth trained with segmentation (-1.0 %)" in lines[6]
    assert "hurts most: normals with edges (-12.0 %)" in lines[6]
    assert lines[6].endswith("50+300 steps, shorter than the 50+600 of the single-task models.")
    assert len(lines) == 7
    longer = relations.facts(results_of(pair_steps=800), single_steps=(50, 600))[-1]
    assert longer.endswith("50+800 steps, longer than the 50+600 of the single-task models.")


def test_facts_without_segmentation_skip_the_why_and_name_an_equal_budget():
    lines = relations.facts(results_of(names=["depth", "normals", "edges"], pair_steps=600),
                            single_steps=(50, 600))
    assert not any("Why, in numbers" in line for line in lines)
    assert "6 ordered pairs" in lines[0]
    assert lines[-1].endswith("steps, the single-task budget.")
