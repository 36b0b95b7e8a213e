"""Checks of simo.merging: hand-computed tiny cases, properties, error messages, fisher_diagonal."""
from __future__ import annotations

import copy
import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simo import merging as M
from simo.errors import MergeError

SETTINGS = settings(max_examples=50, deadline=None)


# ------------------------------------------------------------------------------- helpers
def _sd(**tensors: list) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in tensors.items()}


def vit_like(seed: int, n_tasks: int, dim: int = 4, depth: int = 2, quantize: bool = False,
             dtype: torch.dtype = torch.float32):
    """A tiny timm-ViT-shaped pretrained state dict, n_tasks finetuned ones and their Fishers."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, 5, dim),
              "patch_embed.proj.weight": (dim, 3, 2, 2), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        shapes.update({
            f"blocks.{i}.norm1.weight": (dim,), f"blocks.{i}.norm1.bias": (dim,),
            f"blocks.{i}.attn.qkv.weight": (3 * dim, dim), f"blocks.{i}.attn.qkv.bias": (3 * dim,),
            f"blocks.{i}.attn.proj.weight": (dim, dim),
            f"blocks.{i}.mlp.fc1.weight": (2 * dim, dim),
            f"blocks.{i}.mlp.fc2.weight": (dim, 2 * dim),
        })
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    pre = {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}
    pre["blocks.0.attn.rel_index"] = torch.arange(6).view(2, 3)  # an integer buffer
    fts, fishers = [], []
    for _ in range(n_tasks):
        ft = {}
        for k, v in pre.items():
            if v.is_floating_point():
                noise = torch.randn(v.shape, generator=g)
                if quantize:  # coarse values: many ties at thresholds and exact sign cancellations
                    noise = (noise * 2).round() / 4
                ft[k] = (v.float() + noise).to(dtype)
            else:
                ft[k] = v.clone()
        fts.append(ft)
        fishers.append({k: torch.rand(v.shape, generator=g) for k, v in pre.items()
                        if v.is_floating_point()})
    return pre, fts, fishers


def required_params(name: str, fishers) -> dict:
    """Values for parameters without defaults (a new method with one must be added here)."""
    params = M.method_params(name)
    out = {}
    for p, default in params.items():
        if default is inspect.Parameter.empty:
            assert p == "fishers", f"add a test value for required parameter {p!r} of {name!r}"
            out[p] = fishers
    return out


def assert_sd_close(a, b, atol=1e-6, rtol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=k)


def ties_reference(pre, fts, k, lam):
    """Reference TIES (prateeky2806/ties-merging): flatten the whole model, kthvalue per task."""
    keys = [key for key, v in pre.items() if v.is_floating_point()]
    cd = torch.float64 if any(pre[key].dtype == torch.float64 for key in keys) else torch.float32
    flat = torch.stack([torch.cat([(ft[key].to(cd) - pre[key].to(cd)).flatten() for key in keys])
                        for ft in fts])
    n = flat.shape[1]
    kidx = n - int(n * (k / 100))
    if kidx > 0:
        kth = flat.abs().kthvalue(kidx, dim=1, keepdim=True).values
        flat = flat * (flat.abs() >= kth)
    sign = torch.sign(flat.sum(dim=0))
    sign[sign == 0] = torch.sign(sign.sum())
    keep = torch.where(sign > 0, flat > 0, flat < 0)
    sel = flat * keep
    merged = sel.sum(dim=0) / (sel != 0).sum(dim=0).clamp(min=1)
    out, pos = {}, 0
    for key, v in pre.items():
        if v.is_floating_point():
            d = merged[pos:pos + v.numel()].view(v.shape)
            pos += v.numel()
            out[key] = (v.to(cd) + lam * d).to(v.dtype)
        else:
            out[key] = v.clone()
    return out


# ------------------------------------------------------------------------------- hand-computed
PRE = _sd(w=[1, 2, 3, 4, 5, 6])
TAU1 = [4, -1, 2, -3, 0.5, 1.5]
TAU2 = [2, 3, -5, -0.25, -1, 0.75]
FT1 = _sd(w=[a + b for a, b in zip([1, 2, 3, 4, 5, 6], TAU1)])
FT2 = _sd(w=[a + b for a, b in zip([1, 2, 3, 4, 5, 6], TAU2)])


def test_task_arithmetic_hand() -> None:
    out = M.merge("task_arithmetic", PRE, [FT1, FT2], lam=0.5)
    # θ0 + 0.5·(τ1 + τ2) with τ1 + τ2 = [6, 2, -3, -3.25, -0.5, 2.25]
    assert torch.equal(out["w"], torch.tensor([4, 3, 1.5, 2.375, 4.75, 7.125]))


def test_weight_average_hand() -> None:
    out = M.merge("weight_average", PRE, [FT1, FT2])
    assert torch.equal(out["w"], torch.tensor([4, 3, 1.5, 2.375, 4.75, 7.125]))


@pytest.mark.parametrize("scope", ["global", "tensor"])
def test_ties_hand(scope: str) -> None:
    # k=50, n=6: keep int(3) → threshold = 3rd smallest |τ|, keep |τ| ≥ threshold.
    # |τ1| sorted 0.5 1 1.5 2 3 4 → thr 1.5 → [4, 0, 2, -3, 0, 1.5]
    # |τ2| sorted 0.25 0.75 1 2 3 5 → thr 1 → [2, 3, -5, 0, -1, 0]
    # elect sign of the sum [6, 3, -3, -3, -1, 1.5] → [+, +, -, -, -, +]
    # disjoint mean: [(4+2)/2, 3, -5 (τ1's +2 disagrees), -3, -1, 1.5]
    out = M.merge("ties", PRE, [FT1, FT2], k=50, lam=0.5, scope=scope)
    merged = torch.tensor([3, 3, -5, -3, -1, 1.5])
    assert torch.equal(out["w"], PRE["w"] + 0.5 * merged)
    assert torch.equal(M.global_thresholds(PRE, [FT1, FT2], 50), torch.tensor([1.5, 1.0]))


def test_ties_zero_sign_takes_majority_of_model_or_tensor() -> None:
    pre = _sd(a=[0, 0, 0], b=[0, 0, 0, 0])
    ft1 = _sd(a=[1, -2, -3], b=[1, 1, 1, 1])
    ft2 = _sd(a=[-1, -1, -1], b=[1, 1, 1, 1])
    # a[0] cancels exactly (elected sign 0); signs: a → [0, -, -], b → [+, +, +, +]
    glob = M.merge("ties", pre, [ft1, ft2], k=100, scope="global")  # model majority + → keep +1
    tens = M.merge("ties", pre, [ft1, ft2], k=100, scope="tensor")  # a's majority − → keep −1
    assert torch.equal(glob["a"], torch.tensor([1.0, -1.5, -2.0]))
    assert torch.equal(tens["a"], torch.tensor([-1.0, -1.5, -2.0]))
    assert_sd_close(glob, ties_reference(pre, [ft1, ft2], 100, 1.0), atol=0, rtol=0)


def test_dare_deterministic_and_unbiased() -> None:
    pre = {"w": torch.zeros(20000)}
    ft = {"w": torch.ones(20000)}
    a = M.merge("dare", pre, [ft], p=0.5, seed=3)
    b = M.merge("dare", pre, [ft], p=0.5, seed=3)
    c = M.merge("dare", pre, [ft], p=0.5, seed=4)
    assert torch.equal(a["w"], b["w"]) and not torch.equal(a["w"], c["w"])
    assert set(a["w"].unique().tolist()) == {0.0, 2.0}  # survivors rescaled by 1/(1−p)
    assert abs(float(a["w"].mean()) - 1.0) < 0.05  # E[dare(τ)] = τ
    assert abs(float((a["w"] == 0).float().mean()) - 0.5) < 0.025


def test_dare_p0_is_task_arithmetic_and_ties_combine() -> None:
    out = M.merge("dare", PRE, [FT1, FT2], p=0.0, lam=0.5)
    assert torch.equal(out["w"], M.merge("task_arithmetic", PRE, [FT1, FT2], lam=0.5)["w"])
    out = M.merge("dare", PRE, [FT1, FT2], p=0.0, combine="ties")
    assert torch.equal(out["w"], M.merge("ties", PRE, [FT1, FT2], k=100)["w"])


PRE3 = _sd(w=[0, 0, 0])
FT_A, FT_B, FT_C = _sd(w=[1, 0, 2]), _sd(w=[1, 3, -2]), _sd(w=[0, 1, 4])


def test_tall_masks_hand() -> None:
    # τ_MTL = [2, 4, 4]; mask_t = |τ_t| ≥ 0.5·|τ_MTL − τ_t|
    # A: [1, 0, 2] vs 0.5·[1, 4, 2] → [T, F, T]; B: [1, 3, 2] vs 0.5·[1, 1, 6] → [T, T, F]
    # C: [0, 1, 4] vs 0.5·[2, 3, 0] → [F, F, T]
    masks = M.tall_masks(PRE3, [FT_A, FT_B, FT_C], lam_tall=0.5)
    assert [m["w"].tolist() for m in masks] == [
        [True, False, True], [True, True, False], [False, False, True]]
    assert all(m["w"].dtype == torch.bool for m in masks)
    out = M.merge("tall_mask", PRE3, [FT_A, FT_B, FT_C], lam_tall=0.5, task=1, lam=0.5)
    assert torch.equal(out["w"], torch.tensor([1.0, 2.0, 0.0]))
    out = M.merge("tall_mask", PRE3, [FT_A, FT_B, FT_C], lam_tall=0.5, tasks_keep=[0, 1])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0, 4.0]))


def test_consensus_hand() -> None:
    # mask counts [2, 1, 2]
    fts = [FT_A, FT_B, FT_C]
    assert M.merge("consensus", PRE3, fts, lam_tall=0.5, k=2)["w"].tolist() == [2, 0, 4]
    assert M.merge("consensus", PRE3, fts, lam_tall=0.5, k=1)["w"].tolist() == [2, 4, 4]
    assert M.merge("consensus", PRE3, fts, lam_tall=0.5, k=3)["w"].tolist() == [0, 0, 0]
    assert M.merge("consensus", PRE3, fts, lam_tall=0.5, k=0, lam=0.5)["w"].tolist() == [1, 2, 2]


def test_layer_index_and_lines_hand() -> None:
    assert M.layer_index("blocks.3.attn.qkv.weight", 12) == 3
    for key in ["cls_token", "pos_embed", "patch_embed.proj.weight", "reg_token"]:
        assert M.layer_index(key, 12) == 0
    for key in ["norm.weight", "fc_norm.bias", "head.weight"]:
        assert M.layer_index(key, 12) == 11
    keys = ["cls_token", "blocks.0.w", "blocks.1.w", "blocks.2.w", "norm.weight"]
    pre = {k: torch.zeros(2) for k in keys}
    ft = {k: torch.ones(2) for k in keys}
    out = M.merge("lines", pre, [ft, ft], alpha=0.5, beta=1.0, lam=0.5)
    # scale α + β·l/(L−1) with L=3: [0.5, 0.5, 1.0, 1.5, 1.5]; Σ τ = 2; lam 0.5
    got = [float(out[k][0]) for k in keys]
    assert got == [0.5, 0.5, 1.0, 1.5, 1.5]


def test_fisher_hand() -> None:
    pre = _sd(w=[0, 0, 0], b=[1])
    ft1, ft2 = _sd(w=[0, 2, 1], b=[2]), _sd(w=[4, 4, 3], b=[4])
    f1, f2 = _sd(w=[1, 0, 0]), _sd(w=[3, 0, 1])
    out = M.merge("fisher", pre, [ft1, ft2], fishers=[f1, f2], eps=0.0)
    # w0: (1·0 + 3·4)/4 = 3; w1: Σ F = 0 → plain mean 3; w2: F1=0 → 3; b: no Fisher → mean 3
    assert out["w"].tolist() == [3, 3, 3] and out["b"].tolist() == [3]
    out = M.merge("fisher", pre, [ft1, ft2], fishers=[f1, f2], eps=1.0)
    assert torch.allclose(out["w"], torch.tensor([(2 * 0 + 4 * 4) / 6, 3, (1 + 2 * 3) / 3]))


def test_fisher_diagonal_hand() -> None:
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.zero_()
    model.bias.requires_grad_(False)
    batches = [(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0]])),
               (torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0]]))]

    def loss_fn(m, batch):
        x, y = batch
        return ((m(x) - y) ** 2).sum()

    # batch 1: err 3−1=2 → grad 2·2·[1,1] = [4,4]; batch 2: err 1−3=−2 → grad [−4, 0]
    fis = M.fisher_diagonal(model, batches, loss_fn)
    assert list(fis) == ["weight"]  # bias is frozen
    assert torch.equal(fis["weight"], torch.tensor([[16.0, 8.0]]))
    assert model.weight.grad is None  # existing gradients are restored
    assert list(M.fisher_diagonal(model, batches, loss_fn, names=["weight"])) == ["weight"]
    with pytest.raises(MergeError, match="unknown parameter name for fisher_diagonal 'bias'"):
        M.fisher_diagonal(model, batches, loss_fn, names=["bias"])
    with pytest.raises(MergeError, match="got no batches"):
        M.fisher_diagonal(model, [], loss_fn)


# ------------------------------------------------------------------------------- properties
seeds = st.integers(0, 2**31 - 1)


@SETTINGS
@given(seed=seeds)
def test_ta_single_task_returns_finetuned(seed: int) -> None:
    pre, fts, _ = vit_like(seed, 1)
    assert_sd_close(M.merge("task_arithmetic", pre, fts, lam=1.0), fts[0])


@SETTINGS
@given(seed=seeds, n=st.integers(1, 4))
def test_weight_average_of_identical_models(seed: int, n: int) -> None:
    pre, fts, _ = vit_like(seed, 1)
    assert_sd_close(M.merge("weight_average", pre, [fts[0]] * n), fts[0])


@SETTINGS
@given(seed=seeds, n=st.integers(1, 4), lam=st.floats(0.0, 2.0))
def test_ties_k100_same_signs_is_mean_of_nonzero(seed: int, n: int, lam: float) -> None:
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, (7,), generator=g).float() * 2 - 1
    mags = torch.rand(n, 7, generator=g) * (torch.rand(n, 7, generator=g) > 0.3)
    pre = {"w": torch.randn(7, generator=g)}
    fts = [{"w": pre["w"] + sign * mags[t]} for t in range(n)]
    taus = torch.stack([ft["w"] - pre["w"] for ft in fts])
    expect = pre["w"] + lam * taus.sum(0) / (taus != 0).sum(0).clamp(min=1)
    out = M.merge("ties", pre, fts, k=100, lam=lam)
    torch.testing.assert_close(out["w"], expect, atol=1e-6, rtol=1e-6)


def _method_kwargs(name: str, fishers, perm=None) -> dict:
    kw = required_params(name, fishers)
    if "fishers" in kw and perm is not None:
        kw["fishers"] = [fishers[i] for i in perm]
    return kw


@settings(max_examples=8, deadline=None)
@given(seed=seeds, n=st.integers(2, 4), data=st.data())
@pytest.mark.parametrize("name", sorted(M.METHODS))
def test_every_method_is_invariant_to_task_order(name, seed, n, data) -> None:
    # continuous data: an entry whose task vectors cancel to rounding level may flip its elected
    # sign / TALL mask with the summation order (float32 sums, as the reference); see merging.py
    pre, fts, fishers = vit_like(seed, n)
    perm = data.draw(st.permutations(list(range(n))))
    kw, kw_perm = _method_kwargs(name, fishers), _method_kwargs(name, fishers, perm)
    if "task" in M.METHODS[name].needs:  # one encoder per task: follow that task
        task = data.draw(st.integers(0, n - 1))
        kw["task"], kw_perm["task"] = task, perm.index(task)
    a = M.merge(name, pre, fts, **kw)
    b = M.merge(name, pre, [fts[i] for i in perm], **kw_perm)
    assert_sd_close(a, b, atol=1e-5, rtol=1e-5)


@SETTINGS
@given(seed=seeds, n=st.integers(1, 4), k=st.floats(0.5, 100.0), numel=st.integers(1, 60),
       quantize=st.booleans())
def test_global_and_tensor_ties_agree_on_one_tensor(seed, n, k, numel, quantize) -> None:
    g = torch.Generator().manual_seed(seed)
    pre = {"w": torch.randn(numel, generator=g)}
    fts = []
    for _ in range(n):
        noise = torch.randn(numel, generator=g)
        fts.append({"w": pre["w"] + ((noise * 2).round() / 4 if quantize else noise)})
    a = M.merge("ties", pre, fts, k=k, scope="global")
    b = M.merge("ties", pre, fts, k=k, scope="tensor")
    assert torch.equal(a["w"], b["w"])


@SETTINGS
@given(seed=seeds, n=st.integers(1, 4), k=st.floats(0.01, 100.0), quantize=st.booleans(),
       wide=st.booleans())
def test_global_threshold_is_bit_identical_to_flatten_kthvalue(seed, n, k, quantize, wide):
    dtype = torch.float64 if wide else torch.float32
    pre, fts, _ = vit_like(seed, n, quantize=quantize, dtype=dtype)
    thr = M.global_thresholds(pre, fts, k)
    tvs = M.task_vectors(pre, fts)
    for t, tv in enumerate(tvs):
        flat = torch.cat([v.flatten() for v in tv.values()]).abs()
        kidx = M.kth_index(flat.numel(), k)
        if kidx <= 0:
            assert thr is None
            continue
        ref = flat.kthvalue(kidx).values
        assert thr[t].dtype == ref.dtype and torch.equal(thr[t], ref)
    # the whole merge matches the flatten reference too (quantized data: ties and cancellations)
    assert_sd_close(M.merge("ties", pre, fts, k=k, lam=0.7), ties_reference(pre, fts, k, 0.7),
                    atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------- errors
def test_error_unknown_method_lists_choices() -> None:
    with pytest.raises(MergeError) as err:
        M.merge("nope", PRE, [FT1])
    assert str(err.value).startswith("unknown method 'nope'; choose one of: consensus, dare")
    assert "ties" in str(err.value)


@pytest.mark.parametrize("args, message", [
    (("ties", PRE, []), "finetuned is empty; pass at least one finetuned state dict"),
    (("ties", PRE, PRE), "finetuned must be a list of state dicts, got dict"),
    (("ties", PRE, [FT1, {}]), "finetuned[1] is missing key 'w' that pretrained has"),
    (("ties", PRE, [{**FT1, "x": torch.ones(1)}]), "finetuned[0] has extra key 'x' that "
     "pretrained lacks"),
    (("ties", PRE, [_sd(w=[1, 2])]), "shape mismatch at key 'w': finetuned[0] has (2,), "
     "pretrained has (6,)"),
    (("ties", PRE, [{"w": FT1["w"].double()}]), "dtype mismatch at key 'w': finetuned[0] is "
     "torch.float64, pretrained is torch.float32; cast all models"),
])
def test_error_incompatible_models(args, message) -> None:
    with pytest.raises(MergeError) as err:
        M.merge(*args)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method, params, message", [
    ("task_arithmetic", {"lam": -1}, "parameter lam=-1 is out of range; choose 0 ≤ lam ≤ 10"),
    ("task_arithmetic", {"lam": 11.0}, "parameter lam=11.0 is out of range"),
    ("task_arithmetic", {"lam": "big"}, "parameter lam='big' must be a finite number"),
    ("ties", {"k": 0}, "parameter k=0 is out of range; choose 0 < k ≤ 100"),
    ("ties", {"k": 120}, "parameter k=120 is out of range; choose 0 < k ≤ 100"),
    ("ties", {"scope": "layer"}, "unknown scope 'layer'; choose one of: global, tensor"),
    ("ties", {"kk": 3}, "unknown parameter 'kk' for method 'ties'; valid parameters: k, lam, "
     "scope"),
    ("dare", {"p": 1.0}, "parameter p=1.0 is out of range; choose 0 ≤ p < 1"),
    ("dare", {"p": -0.1}, "parameter p=-0.1 is out of range"),
    ("dare", {"combine": "mean"}, "unknown combine 'mean'; choose one of: sum, ties"),
    ("dare", {"seed": 1.5}, "parameter seed=1.5 must be a finite integer"),
    ("tall_mask", {"lam_tall": -0.4}, "parameter lam_tall=-0.4 is out of range"),
    ("tall_mask", {"task": 2}, "parameter task=2 is out of range; choose 0 ≤ task ≤ 1"),
    ("tall_mask", {"tasks_keep": []}, "parameter tasks_keep=[] must be a non-empty list"),
    ("tall_mask", {"task": 1, "tasks_keep": [0]}, "pass either task or tasks_keep, not both"),
    ("consensus", {"k": 3}, "parameter k=3 is out of range; choose 0 ≤ k ≤ 2"),
    ("lines", {"alpha": -1.0}, "parameter alpha=-1.0 is out of range; choose 0 ≤ alpha ≤ 10"),
    ("lines", {"beta": float("nan")}, "parameter beta=nan must be a finite number"),
    ("fisher", {}, "method 'fisher' needs parameter 'fishers'; pass fishers=..."),
    ("fisher", {"fishers": [{}]}, "fishers has 1 entries but there are 2 finetuned models; pass "
     "one Fisher state dict per finetuned model"),
    ("fisher", {"fishers": [{"w": torch.ones(6)}, {}]}, "fishers[1] lacks key 'w' that other "
     "Fishers have"),
    ("fisher", {"fishers": [{"w": torch.ones(2)}] * 2}, "shape mismatch at key 'w': fishers[0] "
     "has (2,)"),
    ("fisher", {"fishers": [{"w": -torch.ones(6)}] * 2}, "fishers[0]['w'] has negative entries"),
    ("fisher", {"fishers": [{"w": torch.ones(6)}] * 2, "eps": -1},
     "parameter eps=-1 is out of range; choose 0 ≤ eps"),
])
def test_error_parameters(method, params, message) -> None:
    with pytest.raises(MergeError) as err:
        M.merge(method, PRE, [FT1, FT2], **params)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_error_nan_task_vector_in_global_ties() -> None:
    for value in (float("nan"), -float("nan"), float("inf")):
        bad = _sd(w=[1, value, 3, 4, 5, 6])
        with pytest.raises(MergeError, match=r"finetuned\[1\]\['w'\] gives a non-finite \(NaN"):
            M.merge("ties", PRE, [FT1, bad])


def test_register_rejects_duplicates() -> None:
    with pytest.raises(MergeError, match="'ties' is registered twice"):
        M.register("ties")(lambda pretrained, finetuned: pretrained)


# ------------------------------------------------------------------------------- every method
@pytest.mark.parametrize("name", sorted(M.METHODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_method_runs_pure_and_passes_buffers(name: str, dtype: torch.dtype) -> None:
    pre, fts, fishers = vit_like(0, 3, dtype=dtype)
    kw = required_params(name, fishers)
    before = copy.deepcopy((pre, fts, fishers))
    out = M.merge(name, pre, fts, **kw)
    assert M.METHODS[name].paper
    for got, kept in zip((pre, fts, fishers), before):  # inputs are not mutated
        flat_got = [got] if isinstance(got, dict) else got
        flat_kept = [kept] if isinstance(kept, dict) else kept
        for a, b in zip(flat_got, flat_kept):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert list(out) == list(pre)
    for key, value in out.items():
        assert value.shape == pre[key].shape and value.dtype == pre[key].dtype, key
        assert value.data_ptr() not in {t[key].data_ptr() for t in [pre, *fts]}, key
        if value.is_floating_point():
            assert torch.isfinite(value.float()).all(), key
    assert torch.equal(out["blocks.0.attn.rel_index"], pre["blocks.0.attn.rel_index"])


def test_integer_buffer_taken_from_pretrained() -> None:
    pre = {"w": torch.zeros(2), "idx": torch.tensor([1, 2])}
    ft = {"w": torch.ones(2), "idx": torch.tensor([7, 8])}
    for name in ("task_arithmetic", "ties", "weight_average"):
        assert M.merge(name, pre, [ft])["idx"].tolist() == [1, 2]


@pytest.mark.parametrize("name", sorted(M.METHODS))
def test_every_method_declares_the_profile_settings_and_context_it_reads(name: str) -> None:
    from simo.config import load_profile, setting

    fn, profile = M.METHODS[name], load_profile("smoke")
    for keyword, key in fn.settings.items():
        assert keyword in M.method_params(name)
        setting(profile, key)  # a real profile setting (AttributeError otherwise)
    assert set(fn.needs) <= set(M.NEEDS)
    assert "task" not in fn.needs or "task" in M.method_params(name)


def test_single_task_is_the_identity_registered_as_a_method() -> None:
    pre, fts, _ = vit_like(0, 3)
    for i, ft in enumerate(fts):
        out = M.merge("single_task", pre, fts, task=i)
        assert_sd_close(out, {k: ft[k] if k in ft else pre[k] for k in pre}, atol=0, rtol=0)
    with pytest.raises(MergeError, match="task=3 is out of range"):
        M.merge("single_task", pre, fts, task=3)
    with pytest.raises(MergeError, match="need of merge method 'odd'"):
        M.register("odd", needs=("labels",))
