"""Get-or-compute steps of the study, each cached by its inputs (see :mod:`simo.cache`).

profile -> scenes -> ``pretrained`` encoder -> ``finetuned`` single-task models -> (merging,
realignment, previews in later notebooks). Every notebook calls these, so each notebook runs
alone and a batch run reuses work: the first notebook that needs a finetune trains it, the next
one loads it.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Sequence

import torch

from simo import cache, paths
from simo.config import Profile, knob_profiles, setting
from simo.data import make_dataset, subset
from simo.errors import MergeError, TaskError, one_of
from simo.models import MultiTaskModel, build_model
from simo.tasks import Task, get_tasks
from simo.train import evaluate, finetune, pick_device, pretrain

INITS = ("pretrained", "scratch")
OPTIMIZERS = ("adamw", "ivon")
SWEEP_HEADS = ("original", "pretrained")  # heads that read a task-vector sweep (MergeSetup.sweep)
# Source files whose edits invalidate cached training / evaluation results (not the whole package:
# adding an adapter or a plot must not retrain every model).
_TRAIN_CODE = ("train", "models.encoder", "models.heads", "models.model", "tasks", "data.__init__")
_EVAL_CODE = _TRAIN_CODE + ("merging",)


# realignment settings that each kind of cached realignment depends on
_REALIGN_KEYS = {"head": ("n_samples", "head_steps", "head_lr", "batch_size"),
                 "repr": ("n_samples", "head_lr", "batch_size", "adapter_rank", "adapter_steps",
                          "adapter_lr", "adapter_where")}


def _realign_cfg(profile: Profile, keys: tuple[str, ...]) -> dict | None:
    """The realignment settings a cached result depends on (None when it depends on none)."""
    r = dataclasses.asdict(profile.realign)
    return {k: r[k] for k in keys} or None


def _code(profile: Profile, modules: tuple[str, ...] = _TRAIN_CODE) -> tuple[str, ...]:
    """``modules`` plus the code that makes the profile's data (scene renderer or real loaders)."""
    return modules + (("data.scenes",) if profile.data.dataset == "scenes" else
                      ("data.real", "data.mtan"))


def tasks_of(profile: Profile, names: Sequence[str] | None = None) -> list[Task]:
    return get_tasks(list(names or profile.tasks), num_classes=profile.data.num_classes)


def _data_cfg(profile: Profile) -> dict:
    """The data settings a finetune depends on (not the pretraining scenes: those enter through
    the pretrained encoder's key)."""
    return {k: v for k, v in dataclasses.asdict(profile.data).items() if k != "n_pretrain"}


def _encoder_cfg(m) -> dict:
    """The model settings pretraining depends on (heads and feature taps do not matter)."""
    return {k: getattr(m, k) for k in ("arch", "patch_size", "embed_dim", "depth", "num_heads")}


def pretrained(profile: Profile, progress: bool = True) -> cache.Artifact:
    """The pretrained encoder: SimMIM on the pretraining scenes, or ``model.weights`` from disk.

    Tensors are the timm ViT state dict (``vit`` keys); meta holds the pretraining curve.
    """
    from simo.models.encoder import build_encoder, check_weights_file

    m = profile.model
    if m.weights:
        # checked on every call, not only when the cache misses: a damaged release is never used
        w = check_weights_file(m.weights, m.weights_sha256) if m.weights_sha256 else \
            paths.repo_file(m.weights)
        # the file's hash when the profile pins one (checked on load), else its size: a replaced
        # file never reuses another's cached results
        cfg = {"model": dataclasses.asdict(m), "image_size": profile.data.image_size,
               "file": str(w.resolve()),
               "bytes": w.stat().st_size if w.is_file() and not m.weights_sha256 else -1}

        def load(out: Path, _partial: Path) -> None:
            enc = build_encoder(m, profile.data.image_size)
            cache.save_tensors(out / cache.TENSORS, enc.vit.state_dict())
            cache.save_json(out / cache.META, {"source": str(w), "history": []})

        return cache.get_or_compute("weights", cfg, load, modules=("models.encoder",))

    d = profile.data
    cfg = {"data": {"dataset": d.dataset, "data_root": d.data_root, "image_size": d.image_size,
                    "n_pretrain": d.n_pretrain},
           "encoder": _encoder_cfg(m), "pretrain": dataclasses.asdict(profile.pretrain),
           "seed": 0}

    def compute(out: Path, partial: Path) -> None:
        images = make_dataset(profile, "pretrain")["image"]
        enc = build_encoder(m, profile.data.image_size, seed=0).to(pick_device(profile.device))
        res = pretrain(enc.vit, images, profile.pretrain, seed=0, partial_dir=partial,
                       progress=progress)
        cache.save_tensors(out / cache.TENSORS, enc.vit.state_dict())
        cache.save_json(out / cache.META, {"history": res.history, "steps": res.steps,
                                           "samples": res.samples, "seconds": res.seconds})

    return cache.get_or_compute("pretrained", cfg, compute,
                                modules=_code(profile, ("train", "models.encoder", "data.__init__")))


def model_from(profile: Profile, tasks: Sequence[Task], encoder: dict[str, torch.Tensor],
               heads: dict[str, dict[str, torch.Tensor]] | None = None,
               seed: int = 0) -> MultiTaskModel:
    """Assemble a model from an encoder state dict and per-task head state dicts."""
    model = build_model(profile, tasks, seed=seed)
    model.encoder.vit.load_state_dict(encoder)
    for name, sd in (heads or {}).items():
        model.heads[name].load_state_dict(sd)
    return model.to(pick_device(profile.device)).eval()


def finetuned(profile: Profile, task: str | Sequence[str], seed: int = 0,
              init: str = "pretrained", weights: dict[str, float] | None = None,
              weighting: str = "equal", optimizer: str = "adamw",
              progress: bool = True) -> cache.Artifact:
    """A finetuned model (two-phase, warm-up + cosine) for one task or several (joint MTL).

    Joint runs train ``finetune.mtl_steps`` full steps (0: as many as a single-task run), with
    equal loss weights, fixed ``weights`` or Kendall's ``weighting="uncertainty"``. Phase 2 steps
    with AdamW or (``optimizer="ivon"``, the profile's ``previews.ivon_*`` settings) IVON.
    Tensors: ``encoder.<vit key>``, ``head.<task>.<key>`` and ``curvature.<vit key>`` (AdamW's
    final ``exp_avg_sq`` or IVON's ``hess``: the previews' precisions); meta: validation curve,
    optimizer steps, distinct samples seen, wall seconds, and final ``val``/``test`` metrics.
    """
    from simo.train import WEIGHTINGS, check_weights, curvature

    names = [task] if isinstance(task, str) else list(task)
    if init not in INITS:
        raise TaskError(one_of(init, INITS, "init"))
    if weighting not in WEIGHTINGS:
        raise TaskError(one_of(weighting, WEIGHTINGS, "weighting"))
    if optimizer not in OPTIMIZERS:
        raise TaskError(one_of(optimizer, OPTIMIZERS, "optimizer"))
    ivon = ivon_settings(profile) if optimizer == "ivon" else None
    tasks = tasks_of(profile, names)
    weights = check_weights(tasks, weights) if weights is not None else None
    base = pretrained(profile, progress) if init == "pretrained" else None
    ft = dataclasses.asdict(profile.finetune)
    mtl_steps = ft.pop("mtl_steps")
    if len(names) > 1 and mtl_steps:
        ft["steps"] = mtl_steps
    cfg = {"data": _data_cfg(profile), "model": dataclasses.asdict(profile.model),
           "finetune": ft, "tasks": names, "seed": seed, "init": init,
           "pretrained": base.key if base else None, "weights": weights, "weighting": weighting,
           "optimizer": optimizer, "ivon": ivon}

    def compute(out: Path, partial: Path) -> None:
        model = build_model(profile, tasks, seed=seed)
        if base is not None:
            model.encoder.vit.load_state_dict(base.tensors())
        model.to(pick_device(profile.device))
        train, val = make_dataset(profile, "train"), make_dataset(profile, "val")
        res = finetune(model, tasks, train, val, profile.finetune, seed=seed, weights=weights,
                       weighting=weighting, steps=ft["steps"], ivon=ivon,
                       eval_batch_size=profile.eval_batch_size, partial_dir=partial,
                       desc=f"{'+'.join(names)} ({init}, seed {seed})", progress=progress)
        test = make_dataset(profile, "test")
        tensors = {f"encoder.{k}": v for k, v in model.encoder.vit.state_dict().items()}
        for t in tasks:
            tensors.update({f"head.{t.name}.{k}": v
                            for k, v in model.heads[t.name].state_dict().items()})
        tensors.update({f"curvature.{k}": v for k, v in
                        curvature(model, res.optimizer, "encoder.vit.").items()})
        cache.save_tensors(out / cache.TENSORS, tensors)
        cache.save_json(out / cache.META, {
            "history": res.history, "steps": res.steps, "samples": res.samples,
            "seconds": res.seconds,
            "val": evaluate(model, tasks, val, profile.eval_batch_size),
            "test": evaluate(model, tasks, test, profile.eval_batch_size)})

    step = "finetuned" if len(names) == 1 else "multitask"
    return cache.get_or_compute(step, cfg, compute, modules=_code(profile))


def ivon_settings(profile: Profile) -> dict[str, float]:
    """The profile's IVON settings (``previews.ivon_<key>``), as :func:`simo.train.ivon_optimizer`
    takes them."""
    from simo.train import IVON_KEYS

    return {k: getattr(profile.previews, f"ivon_{k}") for k in IVON_KEYS}


def heads_of(art: cache.Artifact) -> dict[str, dict[str, torch.Tensor]]:
    """Per-task head state dicts of a finetuned artifact."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in art.tensors("head.").items():
        task, key = k.split(".", 1)
        out.setdefault(task, {})[key] = v
    return out


def load_finetuned(profile: Profile, art: cache.Artifact) -> MultiTaskModel:
    """The model stored in a finetuned artifact."""
    heads = heads_of(art)
    return model_from(profile, tasks_of(profile, list(heads)), art.tensors("encoder."), heads)


# ------------------------------------------------------------------ merging + evaluation -----------

def single_task_models(profile: Profile, seed: int = 0,
                       progress: bool = True) -> dict[str, cache.Artifact]:
    """The finetuned single-task model of every task of the profile (cached: 01 trains them)."""
    return {t: finetuned(profile, t, seed=seed, progress=progress) for t in profile.tasks}


def encoders_for(method: str, pretrained_sd: dict, finetuned_sds: list[dict], task_names: list[str],
                 **params) -> dict[str, dict[str, torch.Tensor]]:
    """The encoder each task is evaluated with after merging.

    One shared encoder for every method except ``tall_mask``, whose TALL masks give each task its
    own encoder (evaluated with that task's head).
    """
    from simo.merging import merge

    if method == "tall_mask":
        return {t: merge(method, pretrained_sd, finetuned_sds, task=i, **params)
                for i, t in enumerate(task_names)}
    shared = merge(method, pretrained_sd, finetuned_sds, **params)
    return {t: shared for t in task_names}


def _models_per_encoder(profile: Profile, tasks: Sequence[Task], encoders: dict[str, dict],
                        heads: dict[str, dict]) -> list[tuple[list[Task], MultiTaskModel]]:
    """One model per distinct encoder, carrying the heads of the tasks that share it."""
    groups: dict[int, list[Task]] = {}
    for t in tasks:
        groups.setdefault(id(encoders[t.name]), []).append(t)
    return [(ts, model_from(profile, ts, encoders[ts[0].name], {t.name: heads[t.name] for t in ts}))
            for ts in groups.values()]


def evaluate_encoders(profile: Profile, tasks: Sequence[Task], encoders: dict[str, dict],
                      heads: dict[str, dict], data: dict) -> dict[str, dict[str, float]]:
    """Metrics of each task's head on its encoder (shared encoders are run once)."""
    out: dict[str, dict[str, float]] = {}
    for ts, model in _models_per_encoder(profile, tasks, encoders, heads):
        out.update(evaluate(model, ts, data, profile.eval_batch_size))
    return out


def _cost(*runs) -> dict[str, float]:
    """Optimizer steps, distinct labelled samples and wall seconds of one or more training runs."""
    return {"steps": sum(r.steps for r in runs), "samples": max(r.samples for r in runs),
            "seconds": sum(r.seconds for r in runs)}


def realign_heads(profile: Profile, tasks: Sequence[Task], encoders: dict[str, dict],
                  heads: dict[str, dict], data: dict, seed: int = 0
                  ) -> tuple[dict[str, dict], dict[str, float]]:
    """Head realignment on each (merged) encoder: heads start from ``heads``, encoder frozen.

    Returns the new heads and the cost (steps summed over distinct encoders, samples, seconds).
    """
    from simo.train import retrain_heads

    r = profile.realign
    new: dict[str, dict] = {}
    runs = []
    for ts, model in _models_per_encoder(profile, tasks, encoders, heads):
        runs.append(retrain_heads(model, ts, data, steps=r.head_steps, lr=r.head_lr,
                                  batch_size=r.batch_size, seed=seed,
                                  eval_batch_size=profile.eval_batch_size))
        new.update({t.name: {k: v.clone() for k, v in model.heads[t.name].state_dict().items()}
                    for t in ts})
    return new, _cost(*runs)


def realign_representation(profile: Profile, tasks: Sequence[Task], encoder: dict,
                           heads: dict[str, dict], data: dict, seed: int = 0
                           ) -> tuple[MultiTaskModel, dict[str, float]]:
    """Representation realignment: zero-initialised adapters on the frozen merged encoder.

    Adapters and the original heads train together with the equal-weight multi-task loss on the
    small labelled set (adapters at ``adapter_lr``, heads at ``head_lr``), starting exactly at the
    merged model. Returns the adapted model and the cost (steps, samples, seconds).
    """
    from simo.models.adapters import add_adapters
    from simo.train import Phase, multitask_loss, run_phases

    r = profile.realign
    model = model_from(profile, tasks, encoder, heads)
    adapters = add_adapters(model.encoder.vit, r.adapter_rank, r.adapter_where)
    head_params = [p for t in tasks for p in model.heads[t.name].parameters()]
    phase = Phase("adapters", r.adapter_steps,
                  [{"params": adapters, "lr": r.adapter_lr}, {"params": head_params,
                                                              "lr": r.head_lr}],
                  multitask_loss(model, tasks, {t.name: 1.0 for t in tasks}),
                  warmup=min(20, r.adapter_steps // 10))
    res = run_phases(model, [phase], data, batch_size=r.batch_size, seed=seed,
                     desc="representation realignment", progress=False)
    return model.eval(), _cost(res)


def fisher_of(profile: Profile, art: cache.Artifact, task: str, seed: int = 0) -> dict:
    """Diagonal (empirical) Fisher of a single-task model's encoder on its own task's loss."""
    from simo.merging import fisher_diagonal
    from simo.train import sample_batch, step_generator

    model = load_finetuned(profile, art)
    t = tasks_of(profile, [task])[0]
    train = make_dataset(profile, "train")
    batches = [sample_batch(train, profile.finetune.batch_size, step_generator(seed, i), False)[0]
               for i in range(profile.merging.fisher_batches)]
    f = fisher_diagonal(model.encoder.vit, batches,
                        lambda _vit, b: t.loss(model(b["image"])[task], b[t.target]))
    return {k: f.get(k, torch.zeros_like(v)) for k, v in model.encoder.vit.state_dict().items()}


@dataclasses.dataclass
class MergeSetup:
    """Everything a merge needs, gathered once: θ0, the finetuned encoders, heads, Fishers.

    ``encoders(method, lam)`` gives each task's merged encoder with the profile's method knobs;
    ``evaluate`` and ``realigned`` score it with the original or the realigned heads.
    """

    profile: Profile
    tasks: list[Task]
    pretrained: dict[str, torch.Tensor]
    finetuned: list[dict[str, torch.Tensor]]
    heads: dict[str, dict[str, torch.Tensor]]
    seed: int = 0
    fishers: list[dict] | None = None
    sources: list[str] = dataclasses.field(default_factory=list)  # artifact keys it was built from

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def __reduce__(self):
        """Pickle as the recipe, not the tensors: a job worker rebuilds it from the cache."""
        return _setup_from, (self.profile, self.seed, self.fishers is not None)

    def params(self, method: str, lam: float) -> dict:
        from simo.merging import method_params

        m = self.profile.merging
        p: dict = {"ties": {"k": m.ties_k}, "dare": {"p": m.dare_p, "seed": self.seed}}.get(method, {})
        if method == "fisher":
            p["fishers"] = self.fishers
        if "lam" in method_params(method):
            p["lam"] = lam
        return p

    def encoders(self, method: str, lam: float = 1.0) -> dict[str, dict[str, torch.Tensor]]:
        if method == "single_task":
            return dict(zip(self.names, self.finetuned))
        return encoders_for(method, self.pretrained, self.finetuned, self.names,
                            **self.params(method, lam))

    def data(self, split: str) -> dict:
        """``val`` (the λ-selection images), ``test``, or ``small`` (the realignment set)."""
        if split == "small":
            return subset(make_dataset(self.profile, "train"), self.profile.realign.n_samples,
                          self.seed)
        limit = self.profile.merging.n_select if split == "val" else None
        return make_dataset(self.profile, split, limit=limit)

    def _memo(self, kind: str, method: str, lam: float, split: str | None, fn,
              realign_keys: tuple[str, ...] = ()) -> dict:
        params = ({} if method == "single_task" else
                  {k: v for k, v in self.params(method, lam).items() if k != "fishers"})
        cfg = {"kind": kind, "method": method, "params": params, "split": split,
               "sources": self.sources, "seed": self.seed,
               "n_select": self.profile.merging.n_select,
               "realign": _realign_cfg(self.profile, realign_keys),
               "fisher_batches": self.profile.merging.fisher_batches if method == "fisher" else None}
        # representation realignment's loop is assembled here and in the adapters module
        code = _EVAL_CODE + (("models.adapters", "pipeline") if kind == "realigned-repr" else ())
        return cache.memo("merge_eval", cfg, fn, modules=_code(self.profile, code))

    def evaluate(self, method: str, lam: float, split: str) -> dict[str, dict[str, float]]:
        """Metrics of each task's original head on its merged encoder (cached)."""
        return self._memo("original", method, lam, split, lambda: evaluate_encoders(
            self.profile, self.tasks, self.encoders(method, lam), self.heads, self.data(split)))

    def realign(self, method: str, lam: float, kind: str = "head") -> dict:
        """Realign on the small labelled set, then score on val and test (cached).

        ``kind``: ``"head"`` (heads only, features cached) or ``"repr"`` (adapters + heads).
        Returns ``{"val": metrics, "test": metrics, "steps", "samples", "seconds"}``: one
        realignment serves both λ selection (val) and the report (test).
        """
        if kind not in _REALIGN_KEYS:
            raise MergeError(one_of(kind, tuple(_REALIGN_KEYS), "realignment kind"))

        def run() -> dict:
            enc, small = self.encoders(method, lam), self.data("small")
            if kind == "head":
                heads, cost = realign_heads(self.profile, self.tasks, enc, self.heads, small,
                                            self.seed)
                score = lambda split: evaluate_encoders(self.profile, self.tasks, enc, heads,  # noqa: E731
                                                        self.data(split))
            else:
                if method in ("single_task", "tall_mask"):
                    raise MergeError(f"representation realignment needs one shared encoder; "
                                     f"{method!r} gives each task its own")
                model, cost = realign_representation(self.profile, self.tasks,
                                                     enc[self.names[0]], self.heads, small,
                                                     self.seed)
                score = lambda split: evaluate(model, self.tasks, self.data(split),  # noqa: E731
                                               self.profile.eval_batch_size)
            return {"val": score("val"), "test": score("test"), **cost}

        return self._memo(f"realigned-{kind}", method, lam, None, run, _REALIGN_KEYS[kind])

    def realigned(self, method: str, lam: float, split: str,
                  kind: str = "head") -> dict[str, dict[str, float]]:
        """Metrics on ``split`` (val or test) after realignment (see :meth:`realign`)."""
        return self.realign(method, lam, kind)[split]

    def pretrained_heads(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every task's head realigned on the frozen *pretrained* encoder θ0 (the profile's head
        realignment budget, starting from the task's own head). Cached as an artifact."""
        cfg = {"sources": self.sources, "seed": self.seed,
               "realign": _realign_cfg(self.profile, _REALIGN_KEYS["head"])}

        def compute(out: Path, _partial: Path) -> None:
            heads, cost = realign_heads(self.profile, self.tasks,
                                        {n: self.pretrained for n in self.names}, self.heads,
                                        self.data("small"), self.seed)
            cache.save_tensors(out / cache.TENSORS, {f"head.{t}.{k}": v for t, sd in heads.items()
                                                     for k, v in sd.items()})
            cache.save_json(out / cache.META, cost)

        return heads_of(cache.get_or_compute("pretrained_heads", cfg, compute,
                                             modules=_code(self.profile, _EVAL_CODE)))

    def sweep(self, source: str, lam: float, heads: str = "original") -> dict[str, dict[str, float]]:
        """Val metrics of every task on θ0 + λ·τ_source, read by each task's original head or
        (``heads="pretrained"``) by its head realigned on θ0 (:meth:`pretrained_heads`). Cached."""
        from simo.merging import merge

        if source not in self.names:
            raise TaskError(one_of(source, self.names, "source task"))
        if heads not in SWEEP_HEADS:
            raise MergeError(one_of(heads, SWEEP_HEADS, "heads"))

        def run() -> dict:
            enc = merge("task_arithmetic", self.pretrained,
                        [self.finetuned[self.names.index(source)]], lam=lam)
            hs = self.heads if heads == "original" else self.pretrained_heads()
            return evaluate_encoders(self.profile, self.tasks, {n: enc for n in self.names}, hs,
                                     self.data("val"))

        keys = _REALIGN_KEYS["head"] if heads == "pretrained" else ()
        return self._memo(f"sweep-{heads}-{source}", "task_arithmetic", lam, "val", run, keys)


@functools.lru_cache(maxsize=4)
def _setup_from(profile: Profile, seed: int, with_fisher: bool) -> MergeSetup:
    return merge_setup(profile, seed, with_fisher)


def merge_setup(profile: Profile, seed: int = 0, with_fisher: bool = False) -> MergeSetup:
    """Load the pretrained encoder and every single-task model of the profile (training if needed)."""
    single = single_task_models(profile, seed)
    base = pretrained(profile)
    names = list(profile.tasks)
    setup = MergeSetup(profile, tasks_of(profile), base.tensors(),
                       [single[t].tensors("encoder.") for t in names],
                       {t: heads_of(single[t])[t] for t in names}, seed,
                       sources=[base.key] + [single[t].key for t in names])
    if with_fisher:
        setup.fishers = [fisher_of(profile, single[t], t, seed) for t in names]
    return setup


# ------------------------------------------------------------------ previews (notebook 05) ---------

def _previews_realign(profile: Profile) -> Profile:
    """``profile`` with its head realignment set to the previews' (``previews.realign_*``)."""
    pv = profile.previews
    return dataclasses.replace(profile, realign=dataclasses.replace(
        profile.realign, n_samples=pv.realign_samples, head_steps=pv.realign_steps))


def previews_profile(profile: Profile) -> Profile:
    """The profile every previews run uses: the weighted tasks, and ``previews.steps`` full steps
    for per-task runs and weighted ground truth alike (the same budget, as the paper compares)."""
    pv, ft = profile.previews, profile.finetune
    steps = pv.steps or ft.steps
    return dataclasses.replace(profile, tasks=tuple(pv.tasks),
                               finetune=dataclasses.replace(ft, steps=steps, mtl_steps=steps))


def weighted_run(profile: Profile, alpha: Sequence[float], seed: int = 0,
                 optimizer: str = "adamw", progress: bool = True) -> cache.Artifact:
    """Ground truth at ``alpha``: real finetuning on Σ_t α_t ℓ_t over ``previews.tasks``."""
    from simo.previews import check_alpha

    pp = previews_profile(profile)
    alpha = check_alpha(alpha, len(pp.tasks))
    return finetuned(pp, list(pp.tasks), seed=seed, weights=dict(zip(pp.tasks, alpha)),
                     optimizer=optimizer, progress=progress)


def _posterior_runs(kind: str, seed: int, profile: Profile) -> list[tuple[str, int]]:
    """(optimizer, seed) of the per-task runs behind a posterior of ``kind``."""
    if kind == "multi_ivon_hess":
        return [("ivon", s) for s in profile.previews.seeds[:profile.previews.components]]
    return [("ivon" if kind == "ivon_hess" else "adamw", seed)]


def posterior(profile: Profile, task: str, kind: str, seed: int = 0):
    """The posterior of one task's encoder (:class:`simo.previews.Posterior`), cached as safetensors.

    ``isotropic``: the AdamW run's weights, unit precision. ``adamw_sg``: AdamW's final second
    moment (``previews.sg_estimator="adam"``) or a pass of squared minibatch gradients at the final
    weights (``"gradsq"``, ``previews.sg_batches`` batches). ``ivon_hess``: the IVON run's mean and
    precision ess·(hess + weight decay). ``multi_ivon_hess``: the IVON runs of the first
    ``previews.components`` seeds as an equal-weight mixture (``seed`` is ignored).
    """
    from simo.previews import KINDS, gaussian, isotropic, load_posterior, mixture, save_posterior

    if kind not in KINDS:
        raise MergeError(one_of(kind, KINDS, "posterior kind"))
    pp, pv = previews_profile(profile), profile.previews
    if task not in pp.tasks:
        raise TaskError(one_of(task, pp.tasks, "previews task"))
    runs = {(o, s): finetuned(pp, task, seed=s, optimizer=o) for o, s in _posterior_runs(kind, seed,
                                                                                          pp)}
    cfg = {"task": task, "kind": kind, "sources": [a.key for a in runs.values()],
           "sg": [pv.sg_estimator, pv.sg_batches] if kind == "adamw_sg" else None}

    def gaussian_of(art: cache.Artifact, run_seed: int):
        mean = art.tensors("encoder.")
        if kind == "isotropic":
            return isotropic(mean)
        if kind == "adamw_sg" and pv.sg_estimator == "gradsq":
            sg = dataclasses.replace(pp, merging=dataclasses.replace(
                pp.merging, fisher_batches=pv.sg_batches))
            curv = fisher_of(sg, art, task, run_seed)
        else:
            curv = art.tensors("curvature.")
        scale = (pv.ivon_ess, pv.ivon_weight_decay) if kind != "adamw_sg" else (1.0, 0.0)
        prec = {k: scale[0] * (curv[k] + scale[1]) if k in curv else torch.zeros_like(v)
                for k, v in mean.items()}
        return gaussian(mean, prec, kind)

    def compute(out: Path, _partial: Path) -> None:
        parts = [gaussian_of(a, s) for (_, s), a in runs.items()]
        post = mixture(parts, kind) if kind == "multi_ivon_hess" else parts[0]
        save_posterior(out / cache.TENSORS, post)
        cache.save_json(out / cache.META, {"k": len(parts)})

    art = cache.get_or_compute("posterior", cfg, compute,
                               modules=_code(pp, _TRAIN_CODE + ("previews",)))
    return load_posterior(art.path / cache.TENSORS)


@dataclasses.dataclass
class Previewer:
    """Previews one kind of posterior at any α: merge, read with the single-task heads as they
    are, then realign the heads briefly on the previewed encoder and read again (:func:`previewer`).
    """

    profile: Profile  # the previews profile, its head realignment set to previews.realign_*
    tasks: list[Task]
    posteriors: list
    heads: dict[str, dict[str, torch.Tensor]]
    prior_mean: dict[str, torch.Tensor]
    prior_precision: float
    realign_data: dict
    seed: int = 0

    def __call__(self, alpha: Sequence[float], data: dict, realign: bool = True) -> dict:
        """``{"original": metrics, "realigned": metrics or None, "seconds": {"merge",
        "evaluate", "realign"}}`` of the preview at ``alpha``, read on ``data``."""
        import time

        from simo.previews import preview

        t0 = time.perf_counter()
        enc = preview(self.posteriors, alpha, self.prior_mean, self.prior_precision,
                      iters=self.profile.previews.em_iters)
        encs = {t.name: enc for t in self.tasks}
        t1 = time.perf_counter()
        out = {"original": evaluate_encoders(self.profile, self.tasks, encs, self.heads, data),
               "realigned": None}
        t2 = time.perf_counter()
        if realign:
            new, _ = realign_heads(self.profile, self.tasks, encs, self.heads, self.realign_data,
                                   self.seed)
            out["realigned"] = evaluate_encoders(self.profile, self.tasks, encs, new, data)
        t3 = time.perf_counter()
        out["seconds"] = {"merge": t1 - t0, "evaluate": t2 - t1, "realign": t3 - t2}
        return out


def previewer(profile: Profile, kind: str, seed: int = 0) -> Previewer:
    """The :class:`Previewer` of ``kind`` posteriors from the per-task runs of ``seed``. Heads come
    from the same runs (the first component's for a mixture); the prior precision is
    ``previews.prior_rel`` × the posteriors' median precision."""
    from simo.previews import prior_precision

    pp, pv = previews_profile(profile), profile.previews
    tasks = tasks_of(pp)
    posts = [posterior(pp, t.name, kind, seed) for t in tasks]
    o, s = _posterior_runs(kind, seed, pp)[0]
    heads = {t.name: heads_of(finetuned(pp, t.name, seed=s, optimizer=o))[t.name] for t in tasks}
    return Previewer(_previews_realign(pp), tasks, posts, heads, pretrained(pp).tensors(),
                     prior_precision(posts, pv.prior_rel),
                     subset(make_dataset(pp, "train"), pv.realign_samples, seed), seed)


def preview_grid(profile: Profile, kind: str, seed: int = 0, split: str = "test") -> dict:
    """:class:`Previewer` results at every α of the grid (cached, with the summed timings).

    Returns ``{"alphas", "original": [metrics per α], "realigned": [...], "prior_precision",
    "seconds": {"merge", "evaluate", "realign"}}``; "evaluate" times the original-head reading,
    "realign" the realignment and its reading.
    """
    from simo.previews import simplex_grid

    pp, pv = previews_profile(profile), profile.previews
    tasks = tasks_of(pp)
    alphas = simplex_grid(len(tasks), pv.n_alpha)
    sources = {t.name: [finetuned(pp, t.name, seed=s, optimizer=o).key
                        for o, s in _posterior_runs(kind, seed, pp)] for t in tasks}
    cfg = {"kind": kind, "seed": seed, "split": split, "alphas": alphas, "sources": sources,
           "prior_rel": pv.prior_rel, "em_iters": pv.em_iters,
           "sg": [pv.sg_estimator, pv.sg_batches],
           "realign": _realign_cfg(_previews_realign(pp), _REALIGN_KEYS["head"])}

    def run() -> dict:
        at = previewer(profile, kind, seed)
        data = make_dataset(pp, split)
        out: dict = {"alphas": alphas, "original": [], "realigned": [],
                     "prior_precision": at.prior_precision,
                     "seconds": {"merge": 0.0, "evaluate": 0.0, "realign": 0.0}}
        for alpha in alphas:
            r = at(alpha, data)
            out["original"].append(r["original"])
            out["realigned"].append(r["realigned"])
            for k, dt in r["seconds"].items():
                out["seconds"][k] += dt
        return out

    return cache.memo("preview_grid", cfg, run,
                      modules=_code(pp, _EVAL_CODE + ("previews", "pipeline")))


def sensitivity(profile: Profile) -> list[tuple[str, str, list[tuple[object, Profile]]]]:
    """``previews.sensitivity`` as ``(name, key, [(value, profile with that value), ...])`` per
    knob. The profile's own value joins each knob's values (sorted), so every sweep passes through
    the default, whose preview grids the notebook has anyway."""
    return [(k.name, k.key, knob_profiles(profile, k, "previews.sensitivity",
                                          sorted(set(k.values) | {setting(profile, k.key)})))
            for k in profile.previews.sensitivity]
