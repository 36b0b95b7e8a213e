"""Checks of simo.previews: hand-computed closed forms, EM properties, alpha, files, quality."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simo import previews as P
from simo.cache import save_tensors
from simo.errors import CheckpointError, PreviewError

SETTINGS = settings(max_examples=30, deadline=None)
SHAPES = {"w": (3, 2), "b": (4,)}


# ------------------------------------------------------------------------------- helpers
def _sd(**tensors: list) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in tensors.items()}


def rand_sd(g: torch.Generator, scale: float = 1.0, positive: bool = False,
            dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    out = {}
    for k, s in SHAPES.items():
        v = torch.rand(s, generator=g, dtype=torch.float64) if positive else torch.randn(
            s, generator=g, dtype=torch.float64)
        out[k] = (v * scale + (0.05 if positive else 0.0)).to(dtype)
    return out


def rand_mix(g: torch.Generator, k: int, dtype: torch.dtype = torch.float64) -> P.Posterior:
    """K random components with precisions spread over two orders of magnitude."""
    comps = [P.gaussian(rand_sd(g, 2.0, dtype=dtype), rand_sd(g, 3.0, positive=True, dtype=dtype))
             for _ in range(k)]
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.1
    return P.Posterior([c.means[0] for c in comps], [c.precisions[0] for c in comps],
                       (w / w.sum()).tolist(), "multi_ivon_hess")


def simplex(n: int):
    """Hypothesis strategy: points on the simplex with n coordinates (some exactly 0)."""
    raw = st.lists(st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0, 3.7]), min_size=n, max_size=n)
    return raw.filter(lambda v: sum(v) > 0).map(lambda v: [x / sum(v) for x in v])


def close(a: dict, b: dict, atol: float = 1e-6, rtol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=k)


# ------------------------------------------------------------------------------- closed form
def test_closed_form_by_hand():
    # theta = (h0 th0 + a1 h1 m1 + a2 h2 m2) / (h0 + a1 h1 + a2 h2), per element
    g1 = P.gaussian(_sd(x=[1.0, 4.0]), _sd(x=[1.0, 3.0]))
    g2 = P.gaussian(_sd(x=[3.0, 0.0]), _sd(x=[3.0, 1.0]))
    prior = _sd(x=[0.0, 10.0])
    out = P.preview([g1, g2], [0.5, 0.5], prior, 1.0)
    # element 0: (0 + .5*1*1 + .5*3*3) / (1 + .5 + 1.5) = 5/3
    # element 1: (10 + .5*3*4 + 0) / (1 + 1.5 + .5) = 16/3
    torch.testing.assert_close(out["x"], torch.tensor([5 / 3, 16 / 3]))


def test_zero_denominator_returns_prior_and_integer_buffers_pass_through():
    prior = {"x": torch.tensor([7.0, 8.0]), "idx": torch.arange(3)}
    g = P.gaussian({"x": torch.tensor([1.0, 2.0]), "idx": torch.zeros(3, dtype=torch.long)},
                   {"x": torch.tensor([0.0, 2.0]), "idx": torch.zeros(3, dtype=torch.long)})
    out = P.preview([g], [1.0], prior, 0.0)
    torch.testing.assert_close(out["x"], torch.tensor([7.0, 2.0]))
    assert out["idx"].dtype == torch.long and out["idx"].tolist() == [0, 1, 2]


def test_output_has_prior_dtype():
    g = torch.Generator().manual_seed(0)
    prior = rand_sd(g, dtype=torch.float16)
    out = P.preview([P.isotropic(rand_sd(g)), P.isotropic(rand_sd(g))], [0.3, 0.7], prior, 0.1)
    assert all(v.dtype == torch.float16 for v in out.values())


@SETTINGS
@given(seed=st.integers(0, 10_000), alpha=st.integers(2, 4).flatmap(simplex))
def test_isotropic_is_weighted_average(seed, alpha):
    g = torch.Generator().manual_seed(seed)
    means = [rand_sd(g, 3.0, dtype=torch.float64) for _ in alpha]
    out = P.preview([P.isotropic(m) for m in means], alpha, rand_sd(g, dtype=torch.float64), 0.0)
    expected = {k: sum(a * m[k] for a, m in zip(alpha, means)) for k in SHAPES}
    close(out, expected, atol=1e-12, rtol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(2, 4), pick=st.integers(0, 3))
def test_one_hot_alpha_returns_that_task(seed, n, pick):
    pick %= n
    g = torch.Generator().manual_seed(seed)
    posts = [P.gaussian(rand_sd(g, 3.0), rand_sd(g, 5.0, positive=True)) for _ in range(n)]
    alpha = [1.0 if t == pick else 0.0 for t in range(n)]
    out = P.preview(posts, alpha, rand_sd(g, 10.0), 1e-12)
    close(out, posts[pick].means[0], atol=1e-5, rtol=1e-5)


def test_huge_prior_gives_prior_mean():
    g = torch.Generator().manual_seed(1)
    posts = [P.gaussian(rand_sd(g, 3.0), rand_sd(g, 5.0, positive=True)) for _ in range(2)]
    prior = rand_sd(g)
    close(P.preview(posts, [0.4, 0.6], prior, 1e12), prior, atol=1e-6, rtol=0)
    far = P.preview(posts, [0.4, 0.6], prior, 0.0)
    assert max(float((far[k] - prior[k]).abs().max()) for k in SHAPES) > 0.1  # the prior matters


# ------------------------------------------------------------------------------- mixtures / EM
def test_mixture_of_one_equals_gaussian():
    g = torch.Generator().manual_seed(2)
    posts = [P.gaussian(rand_sd(g, 3.0), rand_sd(g, 5.0, positive=True), "ivon_hess")
             for _ in range(3)]
    prior = rand_sd(g)
    expected = P.preview(posts, [0.2, 0.3, 0.5], prior, 0.01)
    mixed = [P.mixture([p]) for p in posts]
    assert all(m.k == 1 and m.weights == [1.0] and m.kind == "multi_ivon_hess" for m in mixed)
    close(P.preview(mixed, [0.2, 0.3, 0.5], prior, 0.01), expected, atol=0, rtol=0)


def test_mixture_of_identical_components_equals_gaussian():
    g = torch.Generator().manual_seed(3)
    posts = [P.gaussian(rand_sd(g, 3.0), rand_sd(g, 5.0, positive=True)) for _ in range(2)]
    prior = rand_sd(g)
    expected = P.preview(posts, [0.7, 0.3], prior, 0.05)
    trace: list[float] = []
    mixed = [P.mixture([p] * 3) for p in posts]
    assert mixed[0].k == 3 and mixed[0].weights == pytest.approx([1 / 3] * 3)
    close(P.preview(mixed, [0.7, 0.3], prior, 0.05, trace=trace), expected)
    assert len(trace) >= 2 and trace[-1] == pytest.approx(trace[0], rel=1e-9)


def test_em_recovers_the_nearer_component():
    # one task, two far-apart components; the π-weighted start (h: 2 vs 1 -> 10/3) is nearer m_0 = 0
    m0, m1 = {"x": torch.zeros(10, dtype=torch.float64)}, {"x": torch.full((10,), 10.0,
                                                                         dtype=torch.float64)}
    post = P.Posterior([m0, m1], [{"x": torch.full((10,), 2.0, dtype=torch.float64)},
                                  {"x": torch.ones(10, dtype=torch.float64)}], [0.5, 0.5])
    trace: list[float] = []
    out = P.preview([post], [1.0], {"x": torch.full((10,), 5.0, dtype=torch.float64)}, 0.0,
                    trace=trace)
    torch.testing.assert_close(out["x"], m0["x"], atol=1e-9, rtol=0)
    assert trace[-1] < trace[0]  # EM moved: the start was not the answer


def test_em_finds_a_point_shared_by_all_tasks():
    # each task: a heavy component at c and a light one elsewhere -> the preview is c
    g = torch.Generator().manual_seed(4)
    c = rand_sd(g, dtype=torch.float64)
    prec = {k: torch.full(s, 4.0, dtype=torch.float64) for k, s in SHAPES.items()}
    posts = [P.Posterior([c, {k: v + 5.0 * (t + 1) for k, v in c.items()}], [prec, prec],
                         [0.9, 0.1]) for t in range(2)]
    close(P.preview(posts, [0.5, 0.5], rand_sd(g, dtype=torch.float64), 0.0), c, atol=1e-9,
          rtol=0)


def test_em_starts_at_the_pi_weighted_closed_form():
    # iters=0 gives the Gaussian closed form with precision H = Σ_k π_k h_k and mean
    # Σ_k π_k h_k m_k / H per task
    g = torch.Generator().manual_seed(6)
    posts = [rand_mix(g, 3), rand_mix(g, 2)]
    prior = rand_sd(g, dtype=torch.float64)
    summary = []
    for p in posts:
        h = {k: sum(w * pr[k] for w, pr in zip(p.weights, p.precisions)) for k in SHAPES}
        hm = {k: sum(w * pr[k] * m[k] for w, pr, m in zip(p.weights, p.precisions, p.means))
              for k in SHAPES}
        summary.append(P.gaussian({k: hm[k] / h[k] for k in SHAPES}, h))
    close(P.preview(posts, [0.4, 0.6], prior, 0.1, iters=0),
          P.preview(summary, [0.4, 0.6], prior, 0.1), atol=1e-12, rtol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 10_000), ks=st.lists(st.integers(2, 3), min_size=2, max_size=3),
       data=st.data())
def test_em_trace_is_non_increasing(seed, ks, data):
    alpha = data.draw(simplex(len(ks)))
    g = torch.Generator().manual_seed(seed)
    posts = [rand_mix(g, k) for k in ks]
    prior = rand_sd(g, dtype=torch.float64)
    trace: list[float] = []
    out = P.preview(posts, alpha, prior, 0.01, iters=30, tol=0.0, trace=trace)
    assert len(trace) >= 2 and all(math.isfinite(v) for v in trace)
    for before, after in zip(trace, trace[1:]):
        assert after <= before + 1e-9 * max(1.0, abs(before))
    assert trace[-1] == pytest.approx(P.objective(out, posts, alpha, prior, 0.01), rel=1e-9)


def test_em_one_hot_responsibilities_do_not_nan():
    # huge precisions on 1e5 parameters: log densities ~ -1e14, responsibilities exactly one-hot
    n = 100_000
    m = [{"x": torch.zeros(n)}, {"x": torch.ones(n)}]
    h = [{"x": torch.full((n,), 1e9)}, {"x": torch.full((n,), 1e9)}]
    post = P.Posterior(m, h, [0.5, 0.5])
    trace: list[float] = []
    out = P.preview([post, P.gaussian(m[1], h[1])], [0.5, 0.5], {"x": torch.zeros(n)}, 1.0,
                    trace=trace)
    assert bool(torch.isfinite(out["x"]).all()) and all(math.isfinite(v) for v in trace)
    torch.testing.assert_close(out["x"], torch.ones(n))  # the shared point of both tasks


def test_responsibilities_at_the_final_theta_pick_the_component_it_lands_on():
    # task 0: a mixture with components at 0 (π 0.7) and 10; task 1: one sharp Gaussian at 10.
    # the shared θ lands on 10, so task 0 sits in component 1 although its π favours component 0
    x = lambda v: {"x": torch.full((4,), float(v), dtype=torch.float64)}  # noqa: E731
    mix = P.Posterior([x(0.0), x(10.0)], [x(1.0), x(1.0)], [0.7, 0.3])
    sharp = P.gaussian(x(10.0), x(50.0))
    resp: list[list[float]] = [[9.0]]  # replaced, not appended to
    out = P.preview([mix, sharp], [0.5, 0.5], x(0.0), 1e-6, responsibilities=resp)
    torch.testing.assert_close(out["x"], x(10.0)["x"], atol=1e-3, rtol=0)
    assert len(resp) == 2 and resp[1] == [1.0]  # K = 1: nothing to weigh
    assert sum(resp[0]) == pytest.approx(1.0) and resp[0][1] > 0.999  # one-hot on component 1
    assert P.components_of(resp, [0.5, 0.5]) == [1, 0]
    # α_t = 0: EM does not weigh the task, its responsibilities are its mixture weights
    zero: list[list[float]] = []
    P.preview([mix, sharp], [0.0, 1.0], x(0.0), 1e-6, responsibilities=zero)
    assert zero[0] == pytest.approx([0.7, 0.3]) and zero[1] == [1.0]
    assert P.components_of(zero, [0.0, 1.0]) == [0, 0]


def test_responsibilities_of_gaussians_and_of_random_mixtures():
    g = torch.Generator().manual_seed(8)
    gauss = [P.gaussian(rand_sd(g), rand_sd(g, positive=True)) for _ in range(2)]
    resp: list[list[float]] = []
    P.preview(gauss, [0.3, 0.7], rand_sd(g), 0.1, responsibilities=resp)
    assert resp == [[1.0], [1.0]]
    posts = [rand_mix(g, 3), rand_mix(g, 2)]
    P.preview(posts, [0.4, 0.6], rand_sd(g, dtype=torch.float64), 0.01, responsibilities=resp)
    assert [len(r) for r in resp] == [3, 2]
    for r in resp:
        assert sum(r) == pytest.approx(1.0) and min(r) >= 0 and max(r) > 0.99  # one-hot-ish


def test_components_of_breaks_ties_to_the_first_and_checks_lengths():
    assert P.components_of([[0.5, 0.5], [0.1, 0.2, 0.7], [1.0]], [0.2, 0.8, 0.0]) == [0, 2, 0]
    assert P.components_of([[0.0, 1.0]], [0.0]) == [0]  # α_t = 0: the first, always
    with pytest.raises(PreviewError, match="one row per task"):
        P.components_of([[1.0]], [0.5, 0.5])


def test_objective_by_hand():
    # one Gaussian, h = (4, 0): -log N = -0.5 log 4 + 0.5 * 4 * (1 - 0)^2; h = 0 entries drop out
    g = P.gaussian(_sd(x=[0.0, 9.0]), _sd(x=[4.0, 0.0]))
    value = P.objective(_sd(x=[1.0, 2.0]), [g], [1.0], _sd(x=[0.0, 0.0]), 0.5)
    assert value == pytest.approx(-0.5 * math.log(4.0) + 2.0 + 0.25 * 5.0)


# ------------------------------------------------------------------------------- input errors
def test_check_alpha_errors():
    assert P.check_alpha([0.25, 0.75], 2) == [0.25, 0.75]
    with pytest.raises(PreviewError, match=r"alpha \[0\.3, 0\.3\] must be task weights on the "
                                           r"simplex .*; it sums to 0\.6$"):
        P.check_alpha([0.3, 0.3], 2)
    with pytest.raises(PreviewError, match=r"negative entry -0\.5"):
        P.check_alpha([-0.5, 1.5], 2)
    with pytest.raises(PreviewError, match=r"has 3 entries but there are 2 tasks"):
        P.check_alpha([0.2, 0.3, 0.5], 2)
    with pytest.raises(PreviewError, match=r"non-finite"):
        P.check_alpha([float("nan"), 1.0], 2)
    with pytest.raises(PreviewError, match=r"must be a list of numbers"):
        P.check_alpha(["a", 1.0], 2)


def test_preview_input_errors_name_the_problem():
    g = P.gaussian(_sd(w=[1.0, 2.0], b=[0.0]), _sd(w=[1.0, 1.0], b=[1.0]))
    prior = _sd(w=[0.0, 0.0], b=[0.0])
    with pytest.raises(PreviewError, match="posteriors is empty"):
        P.preview([], [], prior, 0.0)
    with pytest.raises(PreviewError, match="sums to 0.5"):
        P.preview([g, g], [0.25, 0.25], prior, 0.0)
    with pytest.raises(PreviewError, match=r"prior_prec=-1\.0 must be a finite number >= 0"):
        P.preview([g], [1.0], prior, -1.0)
    with pytest.raises(PreviewError, match=r"posteriors\[0\] component 0 mean has extra key 'b' "
                                           r"that prior_mean lacks"):
        P.preview([g], [1.0], {"w": torch.zeros(2)}, 0.0)
    with pytest.raises(PreviewError, match=r"missing key 'c' that prior_mean has"):
        P.preview([g], [1.0], prior | {"c": torch.zeros(1)}, 0.0)
    with pytest.raises(PreviewError, match=r"shape mismatch at key 'w'.*\(2,\).*\(3,\)"):
        P.preview([g], [1.0], _sd(w=[0.0, 0.0, 0.0], b=[0.0]), 0.0)
    bad = P.gaussian(_sd(w=[1.0, 2.0], b=[0.0]), _sd(w=[1.0, -0.5], b=[1.0]))
    with pytest.raises(PreviewError, match=r"posteriors\[1\] component 0 precision at key 'w' "
                                           r"has negative entries \(min -0\.5\)"):
        P.preview([g, bad], [0.5, 0.5], prior, 0.0)
    nan = P.gaussian(_sd(w=[1.0, float("nan")], b=[0.0]), _sd(w=[1.0, 1.0], b=[1.0]))
    with pytest.raises(PreviewError, match=r"mean at key 'w' has NaN or inf"):
        P.preview([nan], [1.0], prior, 0.0)


def test_posterior_structure_errors():
    with pytest.raises(PreviewError, match=r"component 1 mean has extra key 'z'"):
        P.Posterior([_sd(w=[1.0]), _sd(w=[1.0], z=[2.0])], [_sd(w=[1.0])] * 2, [0.5, 0.5])
    with pytest.raises(PreviewError, match=r"shape mismatch at key 'w': component 0 precision"):
        P.gaussian(_sd(w=[1.0]), _sd(w=[1.0, 2.0]))
    with pytest.raises(PreviewError, match=r"posterior weights \[0\.5, 0\.2\] .* sums to 0\.7"):
        P.Posterior([_sd(w=[1.0])] * 2, [_sd(w=[1.0])] * 2, [0.5, 0.2])
    with pytest.raises(PreviewError, match=r"2 means, 1 precisions"):
        P.Posterior([_sd(w=[1.0])] * 2, [_sd(w=[1.0])], [0.5, 0.5])


# ------------------------------------------------------------------------------- grid, prior
def test_simplex_grid():
    two = P.simplex_grid(2, 9)
    assert len(two) == 9 and two[0] == (0.0, 1.0) and two[-1] == (1.0, 0.0)
    assert [a for a, _ in two] == sorted(a for a, _ in two)
    three = P.simplex_grid(3, 3)
    assert len(three) == 6 and all(sum(a) == pytest.approx(1.0) for a in three)
    assert set(three) == {(0, 0, 1), (0, 0.5, 0.5), (0, 1, 0), (0.5, 0, 0.5), (0.5, 0.5, 0),
                          (1, 0, 0)}
    assert len(P.simplex_grid(3, 11)) == 66 and P.simplex_grid(1, 5) == [(1.0,)]
    for a in P.simplex_grid(3, 11):
        P.check_alpha(a, 3)
    with pytest.raises(PreviewError, match=r"n=1 must be an integer >= 2"):
        P.simplex_grid(2, 1)


def test_prior_precision_by_hand():
    a = P.gaussian(_sd(w=[0.0, 0.0]), _sd(w=[1.0, 100.0]))
    b = P.mixture([P.gaussian(_sd(w=[0.0, 0.0]), _sd(w=[3.0, 0.0])),
                   P.gaussian(_sd(w=[0.0, 0.0]), _sd(w=[5.0, 7.0]))])
    # entries 1, 100, 3, 0, 5, 7 -> lower median 3 (as torch.median); plus 9 -> median 5
    assert P.prior_precision([a, b], 0.01) == pytest.approx(0.03)
    c = P.gaussian(_sd(w=[0.0]), _sd(w=[9.0]))
    assert P.prior_precision([a, b, c], 2.0) == pytest.approx(10.0)
    with pytest.raises(PreviewError, match=r"rel=-1 must be a finite number >= 0"):
        P.prior_precision([a], -1)


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(1, 300), zeros=st.booleans())
def test_prior_precision_matches_torch_median(seed, n, zeros):
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(n, generator=g) * 10.0 ** torch.randint(-8, 8, (n,), generator=g)
    if zeros:
        v[: n // 2] = 0.0
    post = P.gaussian({"a": v[: n // 2], "b": v[n // 2:]}, {"a": v[: n // 2], "b": v[n // 2:]})
    assert P.prior_precision([post], 1.0) == float(v.median())


# ------------------------------------------------------------------------------- files
def test_save_load_roundtrip(tmp_path):
    g = torch.Generator().manual_seed(5)
    post = rand_mix(g, 3, dtype=torch.float32)
    post.means[0]["idx"] = post.means[1]["idx"] = post.means[2]["idx"] = torch.arange(4)
    for p in post.precisions:
        p["idx"] = torch.zeros(4, dtype=torch.long)
    post = P.Posterior(post.means, post.precisions, post.weights, "multi_ivon_hess")
    P.save_posterior(tmp_path / "p.safetensors", post)
    back = P.load_posterior(tmp_path / "p.safetensors")
    assert back.kind == "multi_ivon_hess" and back.weights == post.weights and back.k == 3
    for k in range(3):
        assert list(back.means[k]) == list(post.means[k])  # key order kept
        close(back.means[k], post.means[k], atol=0, rtol=0)
        close(back.precisions[k], post.precisions[k], atol=0, rtol=0)


def test_load_rejects_corrupt_and_foreign_files(tmp_path):
    path = tmp_path / "p.safetensors"
    P.save_posterior(path, P.isotropic(_sd(w=[1.0, 2.0])))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        P.load_posterior(path)
    foreign = tmp_path / "f.safetensors"
    save_tensors(foreign, _sd(w=[1.0]))
    with pytest.raises(CheckpointError, match="not a valid posterior file"):
        P.load_posterior(foreign)
    with pytest.raises(CheckpointError, match="missing"):
        P.load_posterior(tmp_path / "absent.safetensors")


# ------------------------------------------------------------------------------- quality
def test_mae_and_regret():
    assert P.mae([1.0, 2.0, 4.0], [1.0, 3.0, 1.0]) == pytest.approx(4 / 3)
    with pytest.raises(PreviewError, match="equally long"):
        P.mae([1.0], [1.0, 2.0])
    true = [50.0, 70.0, 60.0, 90.0]
    assert P.regret([1.0, 5.0, 2.0, 9.0], true, [0, 1, 2, 3]) == 0.0  # argmaxes agree
    assert P.regret([1.0, 9.0, 2.0, 5.0], true, [0, 1, 2, 3]) == 20.0  # picks 1, best is 3
    assert P.regret([1.0, 9.0, 2.0, 5.0], true, [0, 2, 3]) == 0.0  # 1 is not a candidate
    # ties in pred go to the smallest index, whatever the order of the candidates
    assert P.regret([9.0, 9.0, 0.0, 0.0], true, [0, 1]) == 20.0
    assert P.regret([9.0, 9.0, 0.0, 0.0], true, [1, 0]) == 20.0
    assert P.regret([1.0, 9.0, 9.0, 5.0], true, [2, 1]) == 0.0
    with pytest.raises(PreviewError, match=r"candidate 7 is not an index"):
        P.regret([1.0], [1.0], [7])
    assert P.pick([1.0, 9.0, 9.0, 5.0], (c for c in [3, 2, 1])) == 1  # any iterable; ties: smallest
    assert P.regret([1.0, 9.0, 9.0, 5.0], true, (c for c in [3, 2, 1])) == 20.0
    with pytest.raises(PreviewError, match="candidates is empty"):
        P.pick([1.0], [])


def test_pareto_front():
    pts = [(1, 3), (2, 2), (3, 1), (1, 1), (2, 2), (0, 3), (2.5, 0.5)]
    assert P.pareto_front(pts) == [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]
    assert P.pareto_front([(1, 2, 3), (1, 2, 2), (3, 0, 0)]) == [(1.0, 2.0, 3.0), (3.0, 0.0, 0.0)]
    assert P.pareto_front([]) == []


def test_hypervolume_by_hand():
    assert P.hypervolume([(1, 3), (2, 2), (3, 1)], (0, 0)) == pytest.approx(6.0)
    assert P.hypervolume([(1, 3), (2, 2), (3, 1), (0.5, 0.5)], (0, 0)) == pytest.approx(6.0)
    assert P.hypervolume([(1, 2, 3)], (0, 0, 0)) == pytest.approx(6.0)
    # (2,2,2) and (3,1,1): 8 + 3*1*1 - overlap 2*1*1 = 9
    assert P.hypervolume([(2, 2, 2), (3, 1, 1)], (0, 0, 0)) == pytest.approx(9.0)
    assert P.hypervolume([(2, 3), (4, -1)], (1, 0)) == pytest.approx(3.0)  # (4,-1) adds nothing
    assert P.hypervolume([(2, 3), (4, 0.5)], (1, 0)) == pytest.approx(4.0)  # adds (4-2) x 0.5
    assert P.hypervolume([(0, 3)], (1, 0)) == 0.0  # not strictly above ref: clipped to zero width
    assert P.hypervolume([], (0, 0)) == 0.0
    with pytest.raises(PreviewError, match="same number"):
        P.hypervolume([(1, 2, 3)], (0, 0))


@SETTINGS
@given(pts=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4)),
                    min_size=1, max_size=6))
def test_hypervolume_counts_grid_cells(pts):
    # integer points: the dominated volume is the number of unit cells below some point
    cells = {(x, y, z) for px, py, pz in pts for x in range(px) for y in range(py)
             for z in range(pz)}
    assert P.hypervolume(pts, (0, 0, 0)) == pytest.approx(len(cells))


def test_hypervolume_gap():
    true = [(1, 3), (2, 2), (3, 1)]  # HV 6
    assert P.hypervolume_gap([(1, 1)], true, (0, 0)) == pytest.approx(5 / 6)
    assert P.hypervolume_gap(true, true, (0, 0)) == 0.0
    assert P.hypervolume_gap([(3, 3)], true, (0, 0)) == pytest.approx(-0.5)  # over-promises
    with pytest.raises(PreviewError, match="zero hypervolume"):
        P.hypervolume_gap([(1, 1)], [(0, 5)], (0, 0))


# ------------------------------------------------------------------------------- curves on the grid
def test_task_points_are_normalized_performance_in_points():
    from simo.tasks import get_tasks

    tasks = get_tasks(["segmentation", "depth"], num_classes=3)
    ref = {"segmentation": {"miou": 0.5, "pixel_acc": 0.8}, "depth": {"abs_err": 0.2, "rel_err": 0.4}}
    at = [{"segmentation": {"miou": 0.25, "pixel_acc": 0.8}, "depth": {"abs_err": 0.4, "rel_err": 0.4}}]
    pts = P.task_points(at, ref, tasks)
    assert pts["segmentation"] == [pytest.approx(75.0)]  # mean of 50 % and 100 %
    assert pts["depth"] == [pytest.approx(75.0)]         # lower is better: ref/value


def test_interior_drops_the_corners_and_needs_one_point():
    grid = P.simplex_grid(2, 5)
    assert [grid[i] for i in P.interior(grid)] == [a for a in grid if 0 < a[0] < 1]
    with pytest.raises(PreviewError, match="n_alpha >= 3 for 2 tasks"):
        P.interior([(1.0, 0.0), (0.0, 1.0)])
    with pytest.raises(PreviewError, match="n_alpha >= 4 for 3 tasks"):
        P.interior(P.simplex_grid(3, 3))
    assert P.interior(P.simplex_grid(3, 4)) == [P.simplex_grid(3, 4).index((1 / 3, 1 / 3, 1 / 3))]


@pytest.mark.parametrize("curve, expected", [
    ([1.0, 1.2, 0.9], "flat"), ([0.0, 2.0, 5.0], "monotone"), ([5.0, 5.0, 0.0], "monotone"),
    ([0.0, 5.0, 1.0], "peaked"), ([12.0, 101.0, 105.0, 102.0, 104.0], "monotone"),  # plateau noise
    ([0.0, 4.0, 8.0, 10.0, 8.0, 4.0], "peaked")])
def test_shape(curve, expected):
    assert P.shape(curve) == expected


def test_compare_of_the_truth_with_itself_is_perfect_and_a_shifted_peak_has_regret():
    alphas = P.simplex_grid(2, 5)
    truth = {"a": [0.0, 50.0, 90.0, 95.0, 100.0], "b": [100.0, 98.0, 90.0, 50.0, 0.0]}
    same = P.compare(truth, truth, alphas)
    assert same["regret"] == 0.0 and same["hypervolume_gap"] == pytest.approx(0.0)
    assert all(q["mae"] == 0.0 and q["spearman"] == pytest.approx(1.0)
               for q in same["quality"].values())
    # a preview that peaks at the wrong interior α: truth's mean is 74/90/72.5 on the interior
    pred = {"a": [0.0, 95.0, 50.0, 50.0, 100.0], "b": [100.0, 95.0, 50.0, 50.0, 0.0]}
    out = P.compare(pred, truth, alphas)
    assert out["regret"] == pytest.approx(90.0 - 74.0) and out["pick"] == 1 and same["pick"] == 2
    assert out["quality"]["a"]["mae"] == pytest.approx((45 + 40 + 45) / 5)
    assert out["quality"]["a"]["mae_interior"] == pytest.approx((45 + 40 + 45) / 3)
    with pytest.raises(PreviewError, match="differ"):
        P.compare({"a": pred["a"]}, truth, alphas)
