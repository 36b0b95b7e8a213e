"""Posteriors and the preview itself: Bayesian merging of per-task posteriors (docs/papers.md).

Multitask finetuning minimises ``Σ_t α_t ℓ_t(θ)``; trying many α costs a full run each. A preview
replaces each ``ℓ_t`` by the negative log density of a posterior ``q_t`` learnt on task t alone and
minimises ``Σ_t α_t (−log q_t(θ)) + ½ h0 ‖θ − θ0‖²`` instead, in seconds, so α can be scanned before
paying for real runs (Monzón Maldonado et al., arXiv 2412.08147).

Design (why it looks like this):

* A posterior is a diagonal-Gaussian mixture over the encoder's state dict (:class:`Posterior`);
  K = 1 covers isotropic (task arithmetic), AdamW squared-gradient and IVON-Hessian previews, K > 1
  the MultiIVON mixture. One type, so the grids and the tests treat every kind alike.
* All K = 1: a closed form, elementwise, key by key. Any K > 1: EM (majorise-minimise), whose
  M-step is the same closed form with responsibility-weighted precisions, so both share one code
  path (:func:`_m_step`) and the K = 1 answer is the EM answer for K = 1.
* Log densities drop the ``−½ log 2π`` constants and entries with zero precision (they carry no
  information), in the E-step and in :func:`objective` alike, so the EM trace is non-increasing.
  Responsibilities are normalised in log space: with ~1e6 parameters they are one-hot, not NaN.
* Work tensor by tensor in float64 (a model-sized float64 iterate and its successor are the only
  model-sized temporaries); the result has ``prior_mean``'s dtypes. Non-float entries of
  ``prior_mean`` (index buffers) pass through unchanged. Keep all inputs on one device.
"""
from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from simo.cache import load_tensors, save_tensors
from simo.errors import CheckpointError, PreviewError

Tensor = torch.Tensor
StateDict = dict[str, Tensor]

_FORMAT = "simo.posterior/1"  # safetensors metadata "format" of a posterior file
_F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# posteriors
# ----------------------------------------------------------------------------------------------
@dataclass
class Posterior:
    """A diagonal-Gaussian mixture over encoder weights (K = 1: one Gaussian).

    Component k is ``N(means[k], diag(precisions[k])⁻¹)`` with mixture weight ``weights[k]``.
    Construction checks the structure (keys, shapes, weights on the simplex), not the values.
    """

    means: list[StateDict]
    precisions: list[StateDict]
    weights: list[float] = field(default_factory=lambda: [1.0])
    kind: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.means, list) or not isinstance(self.precisions, list):
            raise PreviewError("Posterior means and precisions must be lists of state dicts "
                               "(one per mixture component); wrap a single Gaussian as [sd]")
        n = len(self.means)
        if n == 0 or len(self.precisions) != n or len(self.weights) != n:
            raise PreviewError(f"a Posterior needs K >= 1 components with one mean, precision and "
                               f"weight each; got {n} means, {len(self.precisions)} precisions, "
                               f"{len(self.weights)} weights")
        self.weights = _simplex("posterior weights", self.weights, n)
        ref = self.means[0]
        for k in range(n):
            _check_keys(f"component {k} mean", self.means[k], ref, "component 0 mean")
            _check_keys(f"component {k} precision", self.precisions[k], ref, "component 0 mean")

    @property
    def k(self) -> int:
        """Number of mixture components K."""
        return len(self.means)


def gaussian(mean: StateDict, precision: StateDict, kind: str = "") -> Posterior:
    """One diagonal Gaussian ``N(mean, diag(precision)⁻¹)``."""
    return Posterior([mean], [precision], [1.0], kind)


def isotropic(mean: StateDict, kind: str = "isotropic") -> Posterior:
    """Unit precision everywhere: the preview becomes weighted averaging / task arithmetic."""
    return gaussian(mean, {key: torch.ones_like(v) for key, v in mean.items()}, kind)


def mixture(components: Sequence[Posterior], kind: str = "multi_ivon_hess") -> Posterior:
    """Pool posteriors (e.g. K IVON runs of one task) into one mixture with equal weight per input.

    K = 1 inputs give equal component weights; a K > 1 input keeps its internal proportions.
    """
    if isinstance(components, Posterior) or len(components) == 0:
        raise PreviewError("mixture needs a non-empty list of Posteriors (one per run)")
    share = 1.0 / len(components)
    means, precisions, weights = [], [], []
    for post in components:
        if not isinstance(post, Posterior):
            raise PreviewError(f"mixture components must be Posteriors, got {type(post).__name__}")
        means += post.means
        precisions += post.precisions
        weights += [w * share for w in post.weights]
    return Posterior(means, precisions, weights, kind)


def save_posterior(path: str | Path, post: Posterior) -> None:
    """Write a posterior as ONE safetensors file: tensors ``mean.{k}.{key}`` and
    ``precision.{k}.{key}``; metadata ``kind``, ``weights`` and ``keys`` (JSON, so it reloads
    with its key order)."""
    tensors: dict[str, Tensor] = {}
    for k, (mean, prec) in enumerate(zip(post.means, post.precisions)):
        tensors.update({f"mean.{k}.{key}": v for key, v in mean.items()})
        tensors.update({f"precision.{k}.{key}": v for key, v in prec.items()})
    meta = {"format": _FORMAT, "kind": post.kind, "weights": json.dumps(post.weights),
            "keys": json.dumps(list(post.means[0]))}
    save_tensors(path, tensors, metadata=meta)


def load_posterior(path: str | Path) -> Posterior:
    """Read a file written by :func:`save_posterior`; anything else is a CheckpointError line."""
    tensors = load_tensors(path)  # missing / corrupt / bit-flipped files fail here
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != _FORMAT:
            raise ValueError("no posterior metadata")
        weights, keys = json.loads(meta["weights"]), json.loads(meta["keys"])
        means = [{key: tensors.pop(f"mean.{k}.{key}") for key in keys} for k in range(len(weights))]
        precs = [{key: tensors.pop(f"precision.{k}.{key}") for key in keys}
                 for k in range(len(weights))]
        if tensors:
            raise ValueError(f"unexpected tensor {next(iter(tensors))!r}")
        return Posterior(means, precs, weights, meta.get("kind", ""))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, PreviewError) as e:
        raise CheckpointError(f"{path} is not a valid posterior file ({str(e) or type(e).__name__}"
                              "); rewrite it with simo.previews.save_posterior") from None


# ----------------------------------------------------------------------------------------------
# alpha, grids and the prior
# ----------------------------------------------------------------------------------------------
def check_alpha(alpha: Sequence[float], n_tasks: int, tol: float = 1e-6) -> list[float]:
    """Task weights as floats, or a PreviewError saying why they are not on the simplex."""
    return _simplex("alpha", alpha, n_tasks, tol, what="task weights", per="task")


def _simplex(name: str, values: Sequence[float], n: int, tol: float = 1e-6, *,
             what: str = "mixture weights", per: str = "component") -> list[float]:
    """Shared by alpha and posterior weights: finite, >= 0, one per item, summing to 1."""
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise PreviewError(f"{name} {values!r} must be a list of numbers, one per {per}") from None
    shown = [round(v, 6) for v in out]
    if len(out) != n:
        raise PreviewError(f"{name} {shown} has {len(out)} entries but there are {n} {per}s; "
                           f"give one weight per {per}")
    if not all(math.isfinite(v) for v in out):
        raise PreviewError(f"{name} {shown} has a non-finite entry; give finite {what}")
    rule = f"{name} {shown} must be {what} on the simplex (>= 0, summing to 1)"
    if min(out) < 0:
        raise PreviewError(f"{rule}; it has the negative entry {min(out):g}")
    if abs(sum(out) - 1.0) > tol:
        raise PreviewError(f"{rule}; it sums to {sum(out):.6g}")
    return out


def simplex_grid(n_tasks: int, n: int) -> list[tuple[float, ...]]:
    """Every α with coordinates in {0, 1/(n−1), …, 1} summing to 1, in lexicographic order of the
    coordinates (2 tasks: ``(0, 1), …, (1, 0)``), i.e. the ground-truth grid of the paper."""
    for name, value, lo in (("n_tasks", n_tasks, 1), ("n", n, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise PreviewError(f"simplex_grid {name}={value!r} must be an integer >= {lo}")
    steps = n - 1
    return [tuple(i / steps for i in idx)
            for idx in itertools.product(range(n), repeat=n_tasks) if sum(idx) == steps]


def prior_precision(posteriors: Sequence[Posterior], rel: float) -> float:
    """``rel`` × the median of every precision entry of every component of every posterior.

    Why relative: squared-gradient / Hessian precisions live on any scale, and a prior on an
    absolute scale swamps them (or vanishes); ~1e-2 × median works across kinds. The median is the
    lower middle for an even count (as ``torch.median``) and is found by a streaming radix
    selection on float32 bit patterns: two passes, no model × T × K concatenation.
    """
    if isinstance(rel, bool) or not isinstance(rel, (int, float)) or not (
            math.isfinite(rel) and rel >= 0):
        raise PreviewError(f"prior_precision rel={rel!r} must be a finite number >= 0 "
                           "(about 1e-2 works)")
    _check_list(posteriors)
    chunks = []
    for t, post in enumerate(posteriors):
        for k, prec in enumerate(post.precisions):
            for key, h in prec.items():
                if torch.is_floating_point(h) and h.numel() > 0:
                    _check_values(f"posteriors[{t}] component {k} precision", key, h, nonneg=True)
                    chunks.append(h)
    n = sum(h.numel() for h in chunks)
    if n == 0:
        raise PreviewError("prior_precision found no float precision entries in the posteriors")
    return float(rel) * _kth_smallest(chunks, (n + 1) // 2)


def _kth_smallest(chunks: Sequence[Tensor], k: int) -> float:
    """The k-th smallest (1-based) of non-negative finite values in ``chunks``, as float32.

    For non-negative IEEE floats the integer order of the bits is the numeric order: histogram the
    high 16 bits to find the bucket holding rank k, then the low 16 bits inside it.
    """
    prefix, rank = 0, k
    for level in (0, 1):
        counts = torch.zeros(1 << 16, dtype=torch.int64)
        for h in chunks:
            bits = h.detach().to(torch.float32).abs().reshape(-1).contiguous().view(torch.int32)
            if level == 1:
                bits = bits[(bits >> 16) == prefix] & 0xFFFF
            else:
                bits = bits >> 16
            counts += torch.bincount(bits.long(), minlength=1 << 16).cpu()
        csum = counts.cumsum(0)
        chosen = int((csum < rank).sum())
        rank -= int(csum[chosen - 1]) if chosen > 0 else 0
        prefix = (prefix << 16) | chosen
    return float(torch.tensor([prefix], dtype=torch.int32).view(torch.float32))


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------
def _check_list(posteriors: Sequence[Posterior]) -> None:
    if isinstance(posteriors, Posterior) or not isinstance(posteriors, Sequence):
        raise PreviewError("posteriors must be a list of Posteriors, one per task; wrap one as [p]")
    if len(posteriors) == 0:
        raise PreviewError("posteriors is empty; pass one Posterior per task")
    for t, post in enumerate(posteriors):
        if not isinstance(post, Posterior):
            raise PreviewError(f"posteriors[{t}] is a {type(post).__name__}, not a Posterior")


def _check_keys(name: str, sd: Mapping[str, Tensor], ref: Mapping[str, Tensor],
                ref_name: str) -> None:
    """Same keys and shapes as ``ref``; the message names the first offending key."""
    if not isinstance(sd, Mapping):
        raise PreviewError(f"{name} must be a state dict (name -> tensor), "
                           f"got {type(sd).__name__}")
    for key in ref:
        if key not in sd:
            raise PreviewError(f"{name} is missing key {key!r} that {ref_name} has; "
                               "use posteriors of the same encoder")
    for key, v in sd.items():
        if key not in ref:
            raise PreviewError(f"{name} has extra key {key!r} that {ref_name} lacks; "
                               "use posteriors of the same encoder")
        if not isinstance(v, Tensor):
            raise PreviewError(f"{name}[{key!r}] is a {type(v).__name__}, not a tensor")
        if v.shape != ref[key].shape:
            raise PreviewError(f"shape mismatch at key {key!r}: {name} has {tuple(v.shape)}, "
                               f"{ref_name} has {tuple(ref[key].shape)}")


def _check_values(name: str, key: str, v: Tensor, *, nonneg: bool = False) -> None:
    if not bool(torch.isfinite(v).all()):
        raise PreviewError(f"{name} at key {key!r} has NaN or inf entries; retrain or drop it")
    if nonneg and bool((v < 0).any()):
        raise PreviewError(f"{name} at key {key!r} has negative entries (min {float(v.min()):g}); "
                           "precisions must be >= 0")


def _check_inputs(posteriors: Sequence[Posterior], alpha: Sequence[float],
                  prior_mean: StateDict, prior_prec: float) -> tuple[list[float], list[str]]:
    """Validate everything once; return alpha as floats and the float keys to merge."""
    _check_list(posteriors)
    alpha = check_alpha(alpha, len(posteriors))
    if isinstance(prior_prec, bool) or not isinstance(prior_prec, (int, float)) or not (
            math.isfinite(prior_prec) and prior_prec >= 0):
        raise PreviewError(f"prior_prec={prior_prec!r} must be a finite number >= 0; "
                           "see prior_precision() for a scale-aware choice")
    if not isinstance(prior_mean, Mapping):
        raise PreviewError(f"prior_mean must be a state dict, got {type(prior_mean).__name__}")
    for key, v in prior_mean.items():
        if not isinstance(v, Tensor):
            raise PreviewError(f"prior_mean[{key!r}] is a {type(v).__name__}, not a tensor")
    keys = [key for key, v in prior_mean.items() if torch.is_floating_point(v)]
    for t, post in enumerate(posteriors):
        for k in range(post.k):
            where = f"posteriors[{t}] component {k}"
            _check_keys(f"{where} mean", post.means[k], prior_mean, "prior_mean")
            _check_keys(f"{where} precision", post.precisions[k], prior_mean, "prior_mean")
            for key in keys:
                _check_values(f"{where} mean", key, post.means[k][key])
                _check_values(f"{where} precision", key, post.precisions[k][key], nonneg=True)
    for key in keys:
        _check_values("prior_mean", key, prior_mean[key])
    return alpha, keys


# ----------------------------------------------------------------------------------------------
# the preview
# ----------------------------------------------------------------------------------------------
def preview(posteriors: Sequence[Posterior], alpha: Sequence[float], prior_mean: StateDict,
            prior_prec: float, *, iters: int = 100, tol: float = 1e-7,
            trace: list[float] | None = None,
            responsibilities: list[list[float]] | None = None) -> StateDict:
    """The previewed weights ``argmin_θ Σ_t α_t (−log q_t(θ)) + ½ prior_prec ‖θ − prior_mean‖²``.

    All K = 1: the closed form ``(h0 θ0 + Σ α_t h_t m_t) / (h0 + Σ α_t h_t)`` (prior_mean where the
    denominator is 0). Any K > 1: EM started from that closed form with each task's π-weighted
    precision Σ_k π_tk h_tk and mean (the K = 1 moment-free summary, and EM's M-step at
    responsibilities = π), iterated until θ moves less than ``tol`` (max abs) or ``iters`` rounds.
    ``trace`` (if given) receives :func:`objective` at the start and after every iteration.
    ``responsibilities`` (if given) is set to the per-task r_tk at the returned θ (the mixture
    weights π_t where there is nothing to weigh: K = 1 or α_t = 0), so a caller can tell which
    component each task's answer sits in (its heads read the preview best).
    """
    alpha, keys = _check_inputs(posteriors, alpha, prior_mean, prior_prec)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise PreviewError(f"iters={iters!r} must be an integer >= 0")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise PreviewError(f"tol={tol!r} must be a finite number >= 0")
    prior_prec = float(prior_prec)
    resp = [list(post.weights) for post in posteriors]  # r_tk = π_tk: the starting point
    theta = _m_step(posteriors, alpha, resp, prior_mean, prior_prec, keys)
    em = any(post.k > 1 for post in posteriors)
    half_logdet = _half_logdets(posteriors, alpha, keys) if em or trace is not None else []
    if em:
        for _ in range(iters):
            logn, prior_term = _log_densities(theta, posteriors, alpha, prior_mean, keys,
                                              half_logdet)
            if trace is not None:
                trace.append(_total(posteriors, alpha, logn, prior_term, prior_prec))
            resp = _responsibilities(posteriors, logn)
            new = _m_step(posteriors, alpha, resp, prior_mean, prior_prec, keys)
            delta = max((float((new[key] - theta[key]).abs().max()) for key in keys
                         if theta[key].numel() > 0), default=0.0)
            theta = new
            if delta < tol:
                break
    if trace is not None or (em and responsibilities is not None):
        logn, prior_term = _log_densities(theta, posteriors, alpha, prior_mean, keys, half_logdet)
        if trace is not None:
            trace.append(_total(posteriors, alpha, logn, prior_term, prior_prec))
        if responsibilities is not None:  # at the final θ, not the last E-step's
            responsibilities[:] = _responsibilities(posteriors, logn)
    elif responsibilities is not None:  # all K = 1: r = π = [1.0], nothing to evaluate
        responsibilities[:] = [list(post.weights) for post in posteriors]
    return {key: theta[key].to(v.dtype) if key in theta else v.detach().clone()
            for key, v in prior_mean.items()}


def objective(theta: StateDict, posteriors: Sequence[Posterior], alpha: Sequence[float],
              prior_mean: StateDict, prior_prec: float) -> float:
    """``Σ_t α_t (−log Σ_k π_tk N(θ; m_tk, h_tk⁻¹)) + ½ prior_prec ‖θ − θ0‖²``, with the
    E-step's constants dropped (no ``½ log 2π``; zero-precision entries contribute nothing)."""
    alpha, keys = _check_inputs(posteriors, alpha, prior_mean, prior_prec)
    _check_keys("theta", theta, prior_mean, "prior_mean")
    th = {key: theta[key].detach().to(_F64) for key in keys}
    logn, prior_term = _log_densities(th, posteriors, alpha, prior_mean, keys,
                                      _half_logdets(posteriors, alpha, keys))
    return _total(posteriors, alpha, logn, prior_term, float(prior_prec))


def _m_step(posteriors: Sequence[Posterior], alpha: list[float], resp: list[list[float]],
            prior_mean: StateDict, prior_prec: float, keys: list[str]) -> StateDict:
    """The weighted closed form, key by key, in float64: precision h0 + Σ α_t r_tk h_tk."""
    out: StateDict = {}
    for key in keys:
        theta0 = prior_mean[key].detach().to(_F64)
        num = theta0 * prior_prec
        den = torch.full_like(theta0, prior_prec)
        for a, post, r in zip(alpha, posteriors, resp):
            for k in range(post.k):
                w = a * r[k]
                if w == 0.0:  # skipped exactly: a zero weight must not meet an inf or NaN
                    continue
                h = post.precisions[k][key].to(device=theta0.device, dtype=_F64)
                m = post.means[k][key].to(device=theta0.device, dtype=_F64)
                den.add_(h, alpha=w)
                num.add_(h * m, alpha=w)
        out[key] = torch.where(den > 0, num / den, theta0)
    return out


def _half_logdets(posteriors: Sequence[Posterior], alpha: list[float],
                  keys: list[str]) -> list[list[float]]:
    """½ Σ log h over the entries with h > 0, per task and component (θ-independent: once)."""
    out = []
    for a, post in zip(alpha, posteriors):
        row = []
        for k in range(post.k):
            total = 0.0
            if a > 0:
                for key in keys:
                    h = post.precisions[k][key].detach().to(_F64)
                    total += float(torch.where(h > 0, h, torch.ones_like(h)).log().sum())
            row.append(0.5 * total)
        out.append(row)
    return out


def _log_densities(theta: StateDict, posteriors: Sequence[Posterior], alpha: list[float],
                   prior_mean: StateDict, keys: list[str], half_logdet: list[list[float]]
                   ) -> tuple[list[list[float]], float]:
    """``log N(θ; m_tk, h_tk⁻¹)`` (constants dropped) for tasks with α_t > 0, and ‖θ − θ0‖²."""
    quad = [[0.0] * post.k for post in posteriors]
    prior_sq = 0.0
    for key in keys:
        th = theta[key]
        prior_sq += float((th - prior_mean[key].to(device=th.device, dtype=_F64)).square().sum())
        for t, (a, post) in enumerate(zip(alpha, posteriors)):
            if a == 0.0:
                continue
            for k in range(post.k):
                h = post.precisions[k][key].to(device=th.device, dtype=_F64)
                m = post.means[k][key].to(device=th.device, dtype=_F64)
                quad[t][k] += float((h * (th - m).square()).sum())
    logn = [[hl - 0.5 * q for hl, q in zip(hls, qs)] for hls, qs in zip(half_logdet, quad)]
    return logn, prior_sq


def _log_joint(post: Posterior, logn_t: list[float]) -> Tensor:
    """log π_tk + log N_tk as a (K,) float64 tensor (log 0 = −inf for empty components)."""
    return torch.tensor(post.weights, dtype=_F64).log() + torch.tensor(logn_t, dtype=_F64)


def _responsibilities(posteriors: Sequence[Posterior], logn: list[list[float]]
                      ) -> list[list[float]]:
    """r_tk ∝ π_tk N_tk, normalised with logsumexp: one-hot (never NaN) when densities are tiny."""
    return [torch.softmax(_log_joint(post, lt), 0).tolist() for post, lt in zip(posteriors, logn)]


def _total(posteriors: Sequence[Posterior], alpha: list[float], logn: list[list[float]],
           prior_sq: float, prior_prec: float) -> float:
    nll = sum(a * -float(torch.logsumexp(_log_joint(post, lt), 0))
              for a, post, lt in zip(alpha, posteriors, logn) if a > 0)
    return nll + 0.5 * prior_prec * prior_sq
