"""Model merging for a ViT encoder: task arithmetic, TIES, DARE, TALL, consensus, LiNeS, Fisher.

Every merge method is a small PURE function ``method(pretrained, finetuned, *, params)``
registered by name in :data:`METHODS`; :func:`merge` dispatches by name and turns every mistake into
one :class:`~simo.errors.MergeError` line. Inputs are never mutated.

Design (why it looks like this):

* Work TENSOR BY TENSOR. For one key the T task vectors ``τ_t = θ_t − θ_0`` are built, used and
  dropped, so the extra memory is about one tensor × T beyond inputs and output, never model × T.
  Global TIES needs one magnitude threshold per task over the whole model; the reference code
  (Yadav et al., arXiv 2306.01708) concatenates everything and calls ``kthvalue``. We find the very
  same value with a two-pass radix selection over the float bit patterns
  (:func:`global_thresholds`), bit-identical to ``kthvalue`` on the concatenation.
* TA, TIES and DARE share one "sparsify → elect sign → combine → scale" path
  (:func:`_generalized_task_arithmetic`, like mergekit's GeneralizedTaskArithmetic).
* Arithmetic runs in float32 (float64 stays float64) so small half-precision differences survive;
  outputs are cast back to each input tensor's dtype.
* Every method is invariant to the order of the tasks (DARE seeds its masks from the content,
  not the position), up to float rounding: sums are float32 as in the reference code, so an entry
  whose task vectors cancel to rounding level may flip its elected TIES sign or TALL mask when
  the tasks are reordered.
* Non-float entries (integer / bool buffers such as index tables) are not merged: the output takes
  ``pretrained``'s value (a copy). They are expected to be equal across models and are not compared.
"""
from __future__ import annotations

import hashlib
import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from simo.errors import MergeError, one_of

Tensor = torch.Tensor
StateDict = dict[str, Tensor]

METHODS: dict[str, Callable[..., StateDict]] = {}

LAM_MAX = 10.0  # upper bound for every scaling coefficient; larger values are almost surely typos
_DIGIT_BITS = 16  # radix-selection digit: 65536 buckets per task and pass
_EMBEDDING_NAMES = frozenset(
    {"cls_token", "reg_token", "dist_token", "mask_token", "pos_embed", "patch_embed", "norm_pre"}
)
_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)(?:\.|$)")


# ----------------------------------------------------------------------------------------------
# registry and dispatch
# ----------------------------------------------------------------------------------------------
NEEDS = ("seed", "fishers", "task")  # what a caller supplies beyond the profile's settings


def register(name: str, paper: str = "", settings: Mapping[str, str] | None = None,
             needs: Sequence[str] = ()) -> Callable[[Callable[..., StateDict]], Callable]:
    """Decorator: add a merge method to :data:`METHODS` under ``name``.

    The method owns its knowledge, so callers hold no method names: ``fn.paper`` cites it,
    ``fn.settings`` maps its keywords to the dotted profile settings that feed them
    (``{"k": "merging.ties_k"}``), and ``fn.needs`` lists what else the caller must pass: the
    run's ``seed``, per-task diagonal ``fishers``, or ``task`` (the method gives each task its own
    encoder: call it once per task index).
    """
    for n in needs:
        if n not in NEEDS:
            raise MergeError(one_of(n, NEEDS, f"need of merge method {name!r}"))

    def deco(fn: Callable[..., StateDict]) -> Callable[..., StateDict]:
        if name in METHODS:
            raise MergeError(f"merge method {name!r} is registered twice; pick a new name")
        fn.paper = paper  # type: ignore[attr-defined]
        fn.method_name = name  # type: ignore[attr-defined]
        fn.settings = dict(settings or {})  # type: ignore[attr-defined]
        fn.needs = tuple(needs)  # type: ignore[attr-defined]
        METHODS[name] = fn
        return fn

    return deco


def method_params(method: str) -> dict[str, Any]:
    """Keyword parameters of a registered method and their defaults (``inspect._empty``: none)."""
    if method not in METHODS:
        raise MergeError(one_of(method, sorted(METHODS), "method"))
    sig = inspect.signature(METHODS[method])
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def merge(
    method: str, pretrained: StateDict, finetuned: list[StateDict], **params: Any
) -> StateDict:
    """Merge ``finetuned`` models (all finetuned from ``pretrained``) with the named method.

    Checks the method name, the parameter names (and required ones) before any work, so a typo in
    a profile fails in milliseconds with the list of valid choices.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise MergeError(one_of(method, sorted(METHODS), "method"))
    valid = method_params(method)
    for name in params:
        if name not in valid:
            raise MergeError(
                f"unknown parameter {name!r} for method {method!r}; "
                f"valid parameters: {', '.join(valid) or '(none)'}"
            )
    for name, default in valid.items():
        if default is inspect.Parameter.empty and name not in params:
            raise MergeError(f"method {method!r} needs parameter {name!r}; pass {name}=...")
    return METHODS[method](pretrained, finetuned, **params)


# ----------------------------------------------------------------------------------------------
# input checks and small helpers
# ----------------------------------------------------------------------------------------------
def check_compatible(pretrained: StateDict, finetuned: list[StateDict]) -> None:
    """Raise MergeError unless every finetuned model has pretrained's keys, shapes and dtypes."""
    if not isinstance(pretrained, Mapping):
        raise MergeError(
            f"pretrained must be a state dict (name -> tensor), got {type(pretrained).__name__}"
        )
    if isinstance(finetuned, (Mapping, torch.Tensor)) or not isinstance(finetuned, Sequence):
        raise MergeError(
            f"finetuned must be a list of state dicts, got {type(finetuned).__name__}; "
            "wrap a single model as [model]"
        )
    if len(finetuned) == 0:
        raise MergeError("finetuned is empty; pass at least one finetuned state dict")
    for key, value in pretrained.items():
        if not isinstance(value, torch.Tensor):
            raise MergeError(f"pretrained[{key!r}] is a {type(value).__name__}, not a tensor")
    for i, ft in enumerate(finetuned):
        if not isinstance(ft, Mapping):
            raise MergeError(f"finetuned[{i}] must be a state dict, got {type(ft).__name__}")
        missing = [k for k in pretrained if k not in ft]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise MergeError(
                f"finetuned[{i}] is missing key {missing[0]!r}{more} that pretrained has; "
                "merge models of the same architecture"
            )
        extra = [k for k in ft if k not in pretrained]
        if extra:
            more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
            raise MergeError(
                f"finetuned[{i}] has extra key {extra[0]!r}{more} that pretrained lacks; "
                "merge models of the same architecture"
            )
        for key, base in pretrained.items():
            other = ft[key]
            if not isinstance(other, torch.Tensor):
                raise MergeError(
                    f"finetuned[{i}][{key!r}] is a {type(other).__name__}, not a tensor"
                )
            if other.shape != base.shape:
                raise MergeError(
                    f"shape mismatch at key {key!r}: finetuned[{i}] has {tuple(other.shape)}, "
                    f"pretrained has {tuple(base.shape)}; merge models of the same architecture"
                )
            if other.dtype != base.dtype:
                raise MergeError(
                    f"dtype mismatch at key {key!r}: finetuned[{i}] is {other.dtype}, "
                    f"pretrained is {base.dtype}; cast all models to one dtype before merging"
                )
            if other.device != base.device:
                raise MergeError(
                    f"device mismatch at key {key!r}: finetuned[{i}] is on {other.device}, "
                    f"pretrained on {base.device}; move all models to one device"
                )


def _number(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
) -> None:
    """Validate a numeric parameter; the message names it and states the valid range."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise MergeError(
            f"parameter {name}={value!r} must be a finite {'integer' if integer else 'number'}"
        )
    lo_ok = lo is None or (value > lo if lo_open else value >= lo)
    hi_ok = hi is None or (value < hi if hi_open else value <= hi)
    if not (lo_ok and hi_ok):
        left = "" if lo is None else f"{lo:g} {'<' if lo_open else '≤'} "
        right = "" if hi is None else f" {'<' if hi_open else '≤'} {hi:g}"
        raise MergeError(f"parameter {name}={value!r} is out of range; choose {left}{name}{right}")


def _check_lam(value: Any, name: str = "lam") -> None:
    _number(name, value, 0.0, LAM_MAX)


def _is_float(t: Tensor) -> bool:
    return torch.is_floating_point(t)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (fp16, bf16, fp32) is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _stacked_taus(pretrained: StateDict, finetuned: Sequence[StateDict], key: str) -> Tensor:
    """(T, *shape) task vectors of one key, in the compute dtype, built without temporaries."""
    base = pretrained[key]
    cdt = _compute_dtype(base.dtype)
    taus = torch.empty((len(finetuned), *base.shape), dtype=cdt, device=base.device)
    base_c = base.to(cdt)
    for t, ft in enumerate(finetuned):
        torch.sub(ft[key].to(cdt), base_c, out=taus[t])
    return taus


def _finish(base: Tensor, delta: Tensor, lam: float) -> Tensor:
    """θ0 + lam·delta, cast back to θ0's dtype (delta may be overwritten)."""
    return delta.mul_(lam).add_(base.to(delta.dtype)).to(base.dtype)


def _passthrough(value: Tensor) -> Tensor:
    return value.detach().clone()


def _map_float_keys(pretrained: StateDict, fn: Callable[[str, Tensor], Tensor]) -> StateDict:
    """Apply ``fn(key, base)`` to every float tensor, one key at a time; other entries pass through.

    The one loop shared by the per-key methods, so the memory rule (one key's task vectors alive at
    a time) and the buffer rule (non-float entries copied from ``pretrained``) live in one place.
    """
    return {key: fn(key, base) if _is_float(base) else _passthrough(base)
            for key, base in pretrained.items()}


def task_vectors(pretrained: StateDict, finetuned: list[StateDict]) -> list[StateDict]:
    """τ_t = θ_t − θ_0 for every float key (Ilharco et al., arXiv 2212.04089), in float32/64.

    Materialises T × model; the merge methods never call it (they work one key at a time).
    """
    check_compatible(pretrained, finetuned)
    out: list[StateDict] = [{} for _ in finetuned]
    for key, base in pretrained.items():
        if _is_float(base):
            cdt = _compute_dtype(base.dtype)
            for t, ft in enumerate(finetuned):
                out[t][key] = ft[key].to(cdt) - base.to(cdt)
    return out


# ----------------------------------------------------------------------------------------------
# TIES trimming: exact per-task magnitude thresholds without concatenating the model
# ----------------------------------------------------------------------------------------------
def kth_index(n: int, k: float) -> int:
    """1-based rank (ascending |τ|) of the TIES threshold among n entries when keeping k percent.

    Reference rule (prateeky2806/ties-merging ``topk_values_mask``): keep = int(n · (k/100)),
    threshold = kthvalue(|τ|, n − keep) and the kept entries are |τ| ≥ threshold. So ties at the
    threshold are kept, and (without ties) keep + 1 entries survive. 0 means "keep everything".
    """
    return n - int(n * (k / 100.0))


def global_thresholds(pretrained: StateDict, finetuned: list[StateDict], k: float) -> Tensor | None:
    """Per-task magnitude threshold over ALL float entries of the model (TIES, scope="global").

    Returns a (T,) tensor equal bit for bit to
    ``torch.cat([τ_t[key].flatten() for key]).abs().kthvalue(kth_index(n, k))`` — or None when
    nothing is trimmed. Instead of concatenating, it runs a radix selection on the bit patterns of
    |τ| (for non-negative IEEE floats the integer order of the bits is the numeric order): one
    pass histograms the high 16 bits of every entry to find the bucket holding the k-th value, a
    second pass histograms the low 16 bits inside that bucket, which pins the exact bits (4 passes
    for float64). Memory: one key's (T, *shape) task vectors plus 65536 counters per task.
    """
    check_compatible(pretrained, finetuned)
    _number("k", k, 0.0, 100.0, lo_open=True)
    keys = [key for key, v in pretrained.items() if _is_float(v) and v.numel() > 0]
    n = sum(pretrained[key].numel() for key in keys)
    kidx = kth_index(n, k)
    if n == 0 or kidx <= 0:
        return None
    wide = any(pretrained[key].dtype == torch.float64 for key in keys)
    sel_dtype, int_dtype, nbits = (
        (torch.float64, torch.int64, 64) if wide else (torch.float32, torch.int32, 32)
    )
    n_tasks = len(finetuned)
    device = pretrained[keys[0]].device
    n_bins = 1 << _DIGIT_BITS
    inf_bits = int(torch.tensor(math.inf, dtype=sel_dtype).view(int_dtype))
    prefix = [0] * n_tasks  # bits of the threshold chosen so far, per task
    rank = [kidx] * n_tasks  # 1-based rank of the threshold among the remaining candidates
    for level in range(nbits // _DIGIT_BITS):
        shift = nbits - _DIGIT_BITS * (level + 1)
        counts = torch.zeros((n_tasks, n_bins), dtype=torch.int64, device=device)
        for key in keys:
            taus = _stacked_taus(pretrained, finetuned, key).view(n_tasks, -1)
            bits = taus.abs_().to(sel_dtype).view(int_dtype)
            if level > 0:  # only entries whose higher bits equal the chosen prefix are candidates
                high = bits >> (shift + _DIGIT_BITS)
                cand = high == torch.tensor(prefix, device=device).view(n_tasks, 1).to(high.dtype)
                del high
            for t in range(n_tasks):
                row = bits[t] if level == 0 else bits[t][cand[t]]
                digit = row >> shift if level == 0 else (row >> shift) & (n_bins - 1)
                try:
                    counts[t] += torch.bincount(digit, minlength=n_bins)
                except RuntimeError:  # a negative digit: a NaN with its sign bit set
                    _raise_non_finite(pretrained, finetuned, keys)
            del taus, bits, digit
        if level == 0 and bool(counts[:, inf_bits >> shift:].any()):  # inf or NaN buckets used
            _raise_non_finite(pretrained, finetuned, keys)
        csum = counts.cumsum(dim=1)
        for t in range(n_tasks):
            chosen = int((csum[t] < rank[t]).sum())  # first bucket whose cumsum reaches the rank
            rank[t] -= int(csum[t, chosen - 1]) if chosen > 0 else 0
            prefix[t] = (prefix[t] << _DIGIT_BITS) | chosen
    return torch.tensor(prefix, dtype=torch.int64, device=device).to(int_dtype).view(sel_dtype)


def _raise_non_finite(pretrained: StateDict, finetuned: Sequence[StateDict], keys: list[str]):
    """Name the first model and key whose task vector has a NaN or inf (TIES cannot rank them)."""
    for key in keys:
        finite = torch.isfinite(_stacked_taus(pretrained, finetuned, key))
        if not bool(finite.all()):
            bad = int((~finite).reshape(len(finetuned), -1).any(dim=1).nonzero()[0])
            raise MergeError(
                f"finetuned[{bad}][{key!r}] gives a non-finite (NaN or inf) task vector; "
                "fix or drop that model"
            )
    raise MergeError("a task vector has non-finite entries; check the models for NaN or inf")


def _tensor_thresholds(taus: Tensor, k: float) -> Tensor | None:
    """Per-task threshold within one tensor (TIES, scope="tensor"); None: keep everything."""
    n = taus[0].numel()
    kidx = kth_index(n, k)
    if n == 0 or kidx <= 0:
        return None
    return taus.reshape(len(taus), -1).abs().kthvalue(kidx, dim=1).values


def _trim_(taus: Tensor, thresholds: Tensor) -> None:
    """Zero entries with |τ_t| < threshold_t, in place (the reference keeps |τ| ≥ threshold)."""
    shape = (len(taus),) + (1,) * (taus.dim() - 1)
    thr = thresholds.to(device=taus.device).view(shape)
    small = taus.abs().to(thr.dtype) < thr
    taus.masked_fill_(small, 0.0)


def _dare_drop_(
    taus: Tensor, finetuned: Sequence[StateDict], key: str, p: float, seed: int
) -> None:
    """DARE (Yu et al., arXiv 2311.03099): drop entries with prob p, rescale survivors by 1/(1−p).

    The mask of task t at ``key`` is drawn from a torch.Generator seeded by a hash of
    (seed, key, the bytes of θ_t[key]): deterministic per key and task, and independent of the
    ORDER of the tasks (so reordering the models never changes the merge). Identical finetuned
    tensors get identical masks.
    """
    if p == 0.0:
        return
    for t, ft in enumerate(finetuned):
        h = hashlib.blake2b(digest_size=8)
        h.update(f"{seed}\0{key}\0".encode())
        raw = ft[key].detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
        h.update(memoryview(raw))
        gen = torch.Generator(device="cpu").manual_seed(int.from_bytes(h.digest(), "little") >> 1)
        drop = torch.rand(taus[t].shape, generator=gen) < p
        taus[t].masked_fill_(drop.to(taus.device), 0.0).div_(1.0 - p)


def _elect_sign(taus: Tensor) -> Tensor:
    """Sign of Σ_t τ_t per entry (TIES "mass" rule: the sum, not a vote count); 0 where it ties."""
    return taus.sum(dim=0).sign_()


def _disjoint_mean(taus: Tensor, sign: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over the tasks whose (trimmed) value agrees with the elected sign and is non-zero.

    As in the reference, ``keep = τ > 0 where sign > 0 else τ < 0`` (a sign left at 0 keeps the
    negative entries); entries no task supports become 0. Computed as Σ max(side·τ, 0)·side so it
    costs few passes; the sums are bit-identical to summing the kept values. Overwrites ``taus``.
    Returns (merged, number of contributing tasks per entry).
    """
    side = torch.where(sign > 0, 1.0, -1.0).to(taus.dtype)
    agree = taus.mul_(side)  # > 0 exactly where the task agrees with the elected sign
    count = (agree > 0).sum(dim=0)
    merged = agree.clamp_(min=0).sum(dim=0).mul_(side).div_(count.clamp(min=1))
    return merged, count


def _generalized_task_arithmetic(
    pretrained: StateDict,
    finetuned: list[StateDict],
    *,
    lam: float,
    sparsify: str | None = None,
    k: float = 100.0,
    scope: str = "global",
    p: float = 0.0,
    seed: int = 0,
    elect: bool = False,
) -> StateDict:
    """Shared path of TA / TIES / DARE: sparsify → elect sign → combine → scale (like mergekit).

    sparsify: None, "magnitude" (TIES trim to the top-k percent) or "random" (DARE drop/rescale).
    elect: False → sum of task vectors (TA); True → elect sign + disjoint mean (TIES).
    Entries whose elected sign is 0 although some task is non-zero (exact cancellation) take the
    majority sign of all elected signs of the whole model (scope="global") or of the tensor
    (scope="tensor"), as the reference ``resolve_zero_signs`` does over what it flattens. The
    whole-model majority is known only at the end, so the few keys with such entries are redone.
    """
    thresholds = None
    if sparsify == "magnitude" and scope == "global":
        thresholds = global_thresholds(pretrained, finetuned, k)

    def delta_of(key: str, majority: float | None) -> tuple[Tensor, int, bool]:
        """Merged task vector of one key, the sum of its elected signs, and whether it has
        cancelled entries that depend on the (not yet known) whole-model majority sign."""
        taus = _stacked_taus(pretrained, finetuned, key)
        # trim (TIES) / drop and rescale (DARE)
        if sparsify == "magnitude":
            thr = thresholds if scope == "global" else _tensor_thresholds(taus, k)
            if thr is not None:
                _trim_(taus, thr)
        elif sparsify == "random":
            _dare_drop_(taus, finetuned, key, p, seed)
        if not elect:
            # sum (task arithmetic)
            return taus.sum(dim=0), 0, False
        # elect sign
        sign = _elect_sign(taus)
        sign_sum = int(sign.sum(dtype=torch.int64)) if scope == "tensor" or majority is None else 0
        if scope == "tensor":
            majority = 0.0 if sign_sum == 0 else math.copysign(1.0, sign_sum)
        undecided = sign == 0
        if majority:  # resolve zero signs; majority 0 (or unknown yet) keeps them at 0 (→ side −1)
            sign.masked_fill_(undecided, majority)
        # disjoint mean
        merged, count = _disjoint_mean(taus, sign)
        pending = majority is None and bool((undecided & (count > 0)).any())
        return merged, sign_sum, pending

    out: StateDict = {}
    total_sign = 0
    revisit: list[str] = []
    for key, base in pretrained.items():
        if not _is_float(base):
            out[key] = _passthrough(base)
            continue
        delta, sign_sum, pending = delta_of(key, None)
        total_sign += sign_sum
        if pending:
            revisit.append(key)
        # scale
        out[key] = _finish(base, delta, lam)
    if total_sign > 0:  # a negative or zero majority gives what the first pass computed
        for key in revisit:
            delta, _, _ = delta_of(key, 1.0)
            out[key] = _finish(pretrained[key], delta, lam)
    return out


# ----------------------------------------------------------------------------------------------
# merge methods
# ----------------------------------------------------------------------------------------------
@register("single_task", paper="no merge: the reference every merge is measured against",
          needs=("task",))
def single_task(pretrained: StateDict, finetuned: list[StateDict], *, task: int = 0) -> StateDict:
    """Task ``task``'s own finetuned encoder (a copy): the identity, registered so that the
    single-task reference is evaluated, cached and realigned like any merge."""
    check_compatible(pretrained, finetuned)
    _number("task", task, 0, len(finetuned) - 1, integer=True)
    return _map_float_keys(pretrained, lambda key, _base: finetuned[task][key].detach().clone())


@register("weight_average", paper="Wortsman et al., Model soups, arXiv 2203.05482")
def weight_average(pretrained: StateDict, finetuned: list[StateDict]) -> StateDict:
    """Uniform mean of the finetuned models: the simplest baseline (a "model soup")."""
    check_compatible(pretrained, finetuned)

    def mean(key: str, base: Tensor) -> Tensor:
        acc = torch.zeros(base.shape, dtype=_compute_dtype(base.dtype), device=base.device)
        for ft in finetuned:
            acc.add_(ft[key])
        return acc.div_(len(finetuned)).to(base.dtype)

    return _map_float_keys(pretrained, mean)


@register("task_arithmetic", paper="Ilharco et al., Editing models with task arithmetic, "
          "arXiv 2212.04089")
def task_arithmetic(
    pretrained: StateDict, finetuned: list[StateDict], *, lam: float = 1.0
) -> StateDict:
    """θ0 + lam·Σ_t τ_t: task vectors add skills linearly near the pretrained point."""
    check_compatible(pretrained, finetuned)
    _check_lam(lam)
    return _generalized_task_arithmetic(pretrained, finetuned, lam=lam)


@register("ties", paper="Yadav et al., TIES-Merging, arXiv 2306.01708",
          settings={"k": "merging.ties_k"})
def ties(
    pretrained: StateDict,
    finetuned: list[StateDict],
    *,
    k: float = 20.0,
    lam: float = 1.0,
    scope: str = "global",
) -> StateDict:
    """TIES: trim each τ_t to its top-k % magnitudes, elect a sign per entry, disjoint mean.

    Trimming removes redundant small updates and sign election resolves interference between
    tasks. k is the percent KEPT (0 < k ≤ 100); scope="global" uses one threshold per task over the
    whole model (as the reference code), scope="tensor" one per task and tensor. Threshold rule:
    :func:`kth_index`. Result θ0 + lam·merged.
    """
    check_compatible(pretrained, finetuned)
    _number("k", k, 0.0, 100.0, lo_open=True)
    _check_lam(lam)
    if scope not in ("global", "tensor"):
        raise MergeError(one_of(scope, ("global", "tensor"), "scope"))
    return _generalized_task_arithmetic(
        pretrained, finetuned, lam=lam, sparsify="magnitude", k=k, scope=scope, elect=True
    )


@register("dare", paper="Yu et al., Language models are Super Mario (DARE), arXiv 2311.03099",
          settings={"p": "merging.dare_p"}, needs=("seed",))
def dare(
    pretrained: StateDict,
    finetuned: list[StateDict],
    *,
    p: float = 0.5,
    lam: float = 1.0,
    seed: int = 0,
    combine: str = "sum",
) -> StateDict:
    """DARE: randomly drop a fraction p of each τ_t and rescale by 1/(1−p) (unbiased), then combine.

    combine="sum" is DARE + task arithmetic; combine="ties" is DARE + TIES sign election and
    disjoint mean (zero signs resolved with the whole-model majority). Masks: see ``_dare_drop_``.
    """
    check_compatible(pretrained, finetuned)
    _number("p", p, 0.0, 1.0, hi_open=True)
    _check_lam(lam)
    _number("seed", seed, 0, None, integer=True)
    if combine not in ("sum", "ties"):
        raise MergeError(one_of(combine, ("sum", "ties"), "combine"))
    return _generalized_task_arithmetic(
        pretrained, finetuned, lam=lam, sparsify="random", p=float(p), seed=seed,
        elect=combine == "ties",
    )


def tall_masks(
    pretrained: StateDict, finetuned: list[StateDict], lam_tall: float = 0.4
) -> list[dict[str, Tensor]]:
    """TALL masks (Wang et al., arXiv 2405.07813): mask_t = |τ_t| ≥ lam_tall·|τ_MTL − τ_t|.

    An entry belongs to task t when τ_t dominates the other tasks' contribution there; with
    τ_MTL = Σ τ_t these masks recover each task's finetuned behaviour from one merged vector.
    Float keys only; bool tensors (T × model bytes).
    """
    check_compatible(pretrained, finetuned)
    _number("lam_tall", lam_tall, 0.0, LAM_MAX)
    masks: list[dict[str, Tensor]] = [{} for _ in finetuned]
    for key, base in pretrained.items():
        if _is_float(base):
            taus = _stacked_taus(pretrained, finetuned, key)
            key_masks = _tall_of(taus, lam_tall)
            for t in range(len(finetuned)):
                masks[t][key] = key_masks[t].clone()
    return masks


def _tall_of(taus: Tensor, lam_tall: float) -> Tensor:
    """(T, *shape) TALL masks of one key from its stacked task vectors."""
    mtl = taus.sum(dim=0)
    return taus.abs() >= (mtl.unsqueeze(0) - taus).abs_().mul_(lam_tall)


@register("tall_mask", paper="Wang et al., Localizing Task Information for Improved Model "
          "Merging and Compression, arXiv 2405.07813", needs=("task",))
def tall_mask(
    pretrained: StateDict,
    finetuned: list[StateDict],
    *,
    lam_tall: float = 0.4,
    lam: float = 1.0,
    task: int = 0,
    tasks_keep: Sequence[int] | None = None,
) -> StateDict:
    """Per-task encoder θ0 + lam·(mask_task ⊙ τ_MTL) from TALL masks.

    A SIMO study evaluates each task with its own head, so this returns the encoder for ONE task:
    call it once per ``task`` index (0 ≤ task < T). ``tasks_keep`` (a list of task indices) uses
    the union of those tasks' masks instead, e.g. one encoder shared by a subset of heads; it
    replaces ``task`` (pass one or the other).
    """
    check_compatible(pretrained, finetuned)
    _number("lam_tall", lam_tall, 0.0, LAM_MAX)
    _check_lam(lam)
    n_tasks = len(finetuned)
    _number("task", task, 0, n_tasks - 1, integer=True)
    if tasks_keep is None:
        chosen = [task]
    else:
        if task != 0:
            raise MergeError("pass either task or tasks_keep, not both")
        if isinstance(tasks_keep, (str, bytes)) or not isinstance(tasks_keep, Sequence) or (
            len(tasks_keep) == 0
        ):
            raise MergeError(
                f"parameter tasks_keep={tasks_keep!r} must be a non-empty list of task indices"
            )
        for t in tasks_keep:
            _number("tasks_keep entry", t, 0, n_tasks - 1, integer=True)
        chosen = sorted(set(tasks_keep))

    def masked(key: str, base: Tensor) -> Tensor:
        taus = _stacked_taus(pretrained, finetuned, key)
        mask = _tall_of(taus, lam_tall)[chosen].any(dim=0)
        return _finish(base, taus.sum(dim=0).mul_(mask), lam)

    return _map_float_keys(pretrained, masked)


@register("consensus", paper="Wang et al., Localizing Task Information for Improved Model "
          "Merging and Compression (consensus merging), arXiv 2405.07813")
def consensus(
    pretrained: StateDict,
    finetuned: list[StateDict],
    *,
    k: int = 2,
    lam: float = 1.0,
    lam_tall: float = 0.4,
) -> StateDict:
    """Consensus merging: θ0 + lam·(1[#TALL masks on ≥ k] ⊙ τ_MTL).

    Weights that matter to fewer than k tasks ("selfish" or "catastrophic" weights) only add
    interference, so they are reset to the pretrained value. 0 ≤ k ≤ T (k = 0: task arithmetic).
    """
    check_compatible(pretrained, finetuned)
    n_tasks = len(finetuned)
    _number("k", k, 0, n_tasks, integer=True)
    _check_lam(lam)
    _number("lam_tall", lam_tall, 0.0, LAM_MAX)

    def voted(key: str, base: Tensor) -> Tensor:
        taus = _stacked_taus(pretrained, finetuned, key)
        votes = _tall_of(taus, lam_tall).sum(dim=0)
        return _finish(base, taus.sum(dim=0).mul_(votes >= k), lam)

    return _map_float_keys(pretrained, voted)


def layer_index(key: str, n_layers: int) -> int:
    """Depth of a ViT state-dict key for LiNeS: ``blocks.{i}.*`` → i.

    Embeddings and tokens (cls_token, reg_token, dist_token, mask_token, pos_embed, patch_embed.*,
    norm_pre.*) → 0; anything else outside the blocks (final norm, fc_norm, head, pooling) sits
    after them → n_layers − 1. A model without blocks (n_layers ≤ 1) maps everything to 0.
    """
    match = _BLOCK_RE.search(key)
    if match:
        return int(match.group(1))
    if _EMBEDDING_NAMES.intersection(key.split(".")):
        return 0
    return max(n_layers - 1, 0)


@register("lines", paper="Wang et al., LiNeS: Post-training Layer Scaling Prevents Forgetting "
          "and Enhances Model Merging, arXiv 2410.17146")
def lines(
    pretrained: StateDict,
    finetuned: list[StateDict],
    *,
    alpha: float = 0.0,
    beta: float = 1.0,
    lam: float = 1.0,
) -> StateDict:
    """LiNeS: θ0 + lam·(alpha + beta·l/(L−1))·Σ τ_t for a key at depth l (:func:`layer_index`).

    Shallow layers hold general features that merging should not disturb, so their update is
    scaled down linearly with depth. L = number of blocks (max index + 1); with L ≤ 1 the depth
    ratio is 0 everywhere.
    """
    check_compatible(pretrained, finetuned)
    _number("alpha", alpha, 0.0, LAM_MAX)
    _number("beta", beta, 0.0, LAM_MAX)
    _check_lam(lam)
    blocks = [int(m.group(1)) for key in pretrained if (m := _BLOCK_RE.search(key))]
    n_layers = max(blocks) + 1 if blocks else 0

    def scaled(key: str, base: Tensor) -> Tensor:
        depth = layer_index(key, n_layers) / (n_layers - 1) if n_layers > 1 else 0.0
        delta = _stacked_taus(pretrained, finetuned, key).sum(dim=0)
        return _finish(base, delta, lam * (alpha + beta * depth))

    return _map_float_keys(pretrained, scaled)


@register("fisher", paper="Matena & Raffel, Merging Models with Fisher-Weighted Averaging, "
          "arXiv 2111.09832", needs=("fishers",))
def fisher(
    pretrained: StateDict,
    finetuned: list[StateDict],
    *,
    fishers: list[StateDict],
    eps: float = 1e-8,
) -> StateDict:
    """Fisher-weighted average θ = Σ_t (F_t+eps)·θ_t / Σ_t (F_t+eps), per entry.

    The diagonal Fisher says how much each task's loss cares about each weight, so each task
    wins where it is most sensitive. eps (as the reference's Fisher floor) keeps the division
    defined; where Σ_t (F_t+eps) is still 0 (eps = 0 and all Fishers 0) the plain mean of the
    finetuned models is used, as it is for keys absent from every Fisher (e.g. buffers).
    A key must be present in all Fishers or in none.
    """
    check_compatible(pretrained, finetuned)
    _number("eps", eps, 0.0, None)
    if isinstance(fishers, Mapping) or not isinstance(fishers, Sequence):
        raise MergeError(
            "parameter fishers must be a list with one Fisher state dict per finetuned model"
        )
    if len(fishers) != len(finetuned):
        raise MergeError(
            f"fishers has {len(fishers)} entries but there are {len(finetuned)} finetuned models; "
            "pass one Fisher state dict per finetuned model, in the same order"
        )
    for i, f in enumerate(fishers):
        if not isinstance(f, Mapping):
            raise MergeError(f"fishers[{i}] must be a state dict, got {type(f).__name__}")
        for key, value in f.items():
            if key not in pretrained:
                raise MergeError(f"fishers[{i}] has key {key!r} that pretrained lacks")
            if not isinstance(value, torch.Tensor) or value.shape != pretrained[key].shape:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise MergeError(
                    f"shape mismatch at key {key!r}: fishers[{i}] has {shape}, "
                    f"pretrained has {tuple(pretrained[key].shape)}"
                )
    out: StateDict = {}
    for key, base in pretrained.items():
        if not _is_float(base):
            out[key] = _passthrough(base)
            continue
        cdt = _compute_dtype(base.dtype)
        present = [key in f for f in fishers]
        if any(present) and not all(present):
            raise MergeError(
                f"fishers[{present.index(False)}] lacks key {key!r} that other Fishers have; "
                "compute all Fishers over the same parameters"
            )
        mean = torch.zeros(base.shape, dtype=cdt, device=base.device)
        for ft in finetuned:
            mean.add_(ft[key])
        mean.div_(len(finetuned))
        if not all(present):
            out[key] = mean.to(base.dtype)
            continue
        num = torch.zeros_like(mean)
        den = torch.zeros_like(mean)
        for i, (ft, f) in enumerate(zip(finetuned, fishers)):
            weight = f[key].to(device=base.device, dtype=cdt)
            if bool((weight < 0).any()):
                raise MergeError(f"fishers[{i}][{key!r}] has negative entries; a Fisher is ≥ 0")
            weight = weight + eps
            num.addcmul_(weight, ft[key].to(cdt))
            den.add_(weight)
        merged = torch.where(den > 0, num / den.clamp(min=torch.finfo(cdt).tiny), mean)
        out[key] = merged.to(base.dtype)
    return out


def fisher_diagonal(
    model: nn.Module,
    batches: Iterable,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    names: Iterable[str] | None = None,
) -> StateDict:
    """Diagonal empirical Fisher: mean over batches of the squared gradient of ``loss_fn``.

    For Fisher merging (Matena & Raffel, arXiv 2111.09832). One squared gradient per batch (use
    batches of one example for the per-example empirical Fisher). Only parameters with
    requires_grad (optionally restricted to ``names``); keys are ``named_parameters`` names,
    which match the state dict. The model's existing ``.grad`` values are restored afterwards.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if names is not None:
        wanted = list(names)
        for n in wanted:
            if n not in params:
                raise MergeError(one_of(n, sorted(params), "parameter name for fisher_diagonal"))
        params = {n: params[n] for n in wanted}
    if not params:
        raise MergeError("fisher_diagonal found no parameters with requires_grad=True")
    saved = {n: p.grad for n, p in params.items()}
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    count = 0
    try:
        with torch.enable_grad():
            for batch in batches:
                for p in params.values():
                    p.grad = None
                loss = loss_fn(model, batch)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise MergeError("loss_fn must return a scalar tensor for fisher_diagonal")
                loss.backward()
                for n, p in params.items():
                    if p.grad is not None:
                        sums[n].add_(p.grad.detach().float().square())
                count += 1
    finally:
        for n, p in params.items():
            p.grad = saved[n]
    if count == 0:
        raise MergeError("fisher_diagonal got no batches; pass at least one batch")
    return {n: s.div_(count) for n, s in sums.items()}
