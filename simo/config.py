"""Profiles: YAML files in ``profiles/`` loaded into frozen dataclasses, validated with clear errors.

A profile fixes the scale of the whole study (``smoke`` for CI, ``tiny`` for the embedded default on
a laptop CPU, ``gpu`` for paper settings). Notebooks never edit code to change scale: they name a
profile and may override single knobs with dotted keys (``{"finetune.steps": 200}``).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import yaml

from simo import paths
from simo.errors import ConfigError, one_of


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "scenes"  # scenes | nyuv2 | cityscapes | taskonomy
    data_root: str | None = None  # directory holding a real dataset (unused for scenes)
    image_size: int = 48  # square side of rendered scenes; short side of real images (downscaled)
    n_pretrain: int = 8000  # pretraining scenes (other distribution)
    n_train: int = 3000
    n_val: int = 500
    n_test: int = 500
    num_classes: int | None = None  # segmentation classes; None: the dataset's (DATASET_CLASSES)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "vit_small_patch16_224"  # any timm ViT; size knobs below override it
    patch_size: int = 8
    embed_dim: int = 96
    depth: int = 6
    num_heads: int = 3
    feature_blocks: tuple[int, ...] = (1, 3, 5)  # 0-based blocks whose outputs the heads read
    use_cls: bool = True  # concatenate the CLS token (broadcast) to every block's patch features
    head: str = "linear"  # linear | dpt
    head_bn: bool = False  # BatchNorm before the linear head's 1x1 conv (official code: seg/normals)
    weights: str | None = None  # local weights file (safetensors, relative to the repo or absolute);
    # None = pretrain with SimMIM on the profile's pretraining scenes (the weak θ0 of the first study)
    weights_sha256: str | None = None  # checked on load when set (the released foundation encoder)


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    mask_ratio: float = 0.5  # SimMIM: fraction of patches replaced by the mask token


@dataclass(frozen=True)
class FoundationConfig:
    """The embedded foundation encoder (``python -m simo foundation``, :mod:`simo.foundation`):
    pretrained once on the wide scene distribution, released as ``model.weights``."""

    objective: str = "aux"  # aux (dense targets no study task predicts) | simmim (normalized pixels)
    n_scenes: int = 48000  # distinct pretraining scenes (the "wide" distribution, its own seeds)
    steps: int = 10000
    batch_size: int = 64
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    warmup: int = 500
    mask_ratio: float = 0.5  # patches hidden from the encoder (aux: predicted from context too)
    probe_every: int = 0  # transfer curve: a frozen linear probe every k steps (0: at the end only)
    probe_steps: int = 300  # head steps of each probe (on cached features of the train split)
    ckpt_every: int = 500  # resumable checkpoints
    out: str = "build/foundation/encoder.safetensors"  # where the release (+ card) is written


@dataclass(frozen=True)
class FinetuneConfig:
    head_steps: int = 100  # phase 1: heads only, encoder frozen
    steps: int = 1500  # phase 2: encoder + heads
    mtl_steps: int = 0  # phase 2 of joint multi-task runs; 0 = same as steps
    batch_size: int = 32
    lr: float = 1e-3  # encoder learning rate (phase 2)
    head_lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 20
    grad_clip: float = 1.0
    eval_every: int = 100  # validation curve resolution (steps)
    ckpt_every: int = 250  # resumable checkpoints (steps)
    n_eval: int = 500  # validation images used for the curves
    scales: tuple[float, ...] = (1.0,)  # random zoom + crop (paper: 1, 1.2, 1.5); 1: flips only
    # IVON instead of AdamW in phase 2 (finetuned(..., optimizer="ivon")): the previews' Hessians
    ivon_lr: float = 2.0
    ivon_head_lr: float = 2.0
    ivon_ess: float = 1.0e8  # tempered: only precision ratios matter to a preview
    ivon_hess_init: float = 0.1
    ivon_beta2: float = 0.99  # 0.99999 (IVON's default) leaves hess at hess_init on short runs
    ivon_weight_decay: float = 1.0e-4


@dataclass(frozen=True)
class MergeConfig:
    lam_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    methods: tuple[str, ...] = ("weight_average", "task_arithmetic", "ties", "dare", "tall_mask",
                                "consensus", "lines", "fisher")
    ties_k: float = 20.0  # percent of each task vector kept by TIES (paper default; code uses 100)
    dare_p: float = 0.5
    fisher_batches: int = 8  # minibatches of the train split for the diagonal Fisher
    n_select: int = 500  # validation images used to select lambda


@dataclass(frozen=True)
class RealignConfig:
    n_samples: int = 500  # small labelled set (from the train split)
    head_steps: int = 200  # head realignment on cached features of the frozen merged encoder
    head_lr: float = 1e-3
    batch_size: int = 32
    adapter_rank: int = 16
    adapter_steps: int = 200  # representation realignment: adapters + heads (at head_lr), encoder frozen
    adapter_lr: float = 1e-3
    adapter_where: str = "block"  # block (x + BAx on each block's output, the paper) | lora
    select_stride: int = 1  # realigned-λ search: every k-th grid value, then the best's neighbours


@dataclass(frozen=True)
class RelationsConfig:
    """Task relationships (notebook 04): task-vector sweeps and their ground truth."""

    lam_max: float = 1.5  # sweep θ0 + λ·τ_s for λ in 0 .. lam_max (the paper: linspace(0, 1.5, 16))
    lam_step: float = 0.1
    pair_steps: int = 0  # full-phase steps of every pair and single run of the ground truth; 0 = finetune.steps
    pair_seeds: tuple[int, ...] = (0, 1)  # seeds of the pair trainings (the rank correlation's CI)


@dataclass(frozen=True)
class KnobPoint:
    """A knob value that moves several settings at once, written ``{label: ..., set: {dotted:
    value}}``: "pretraining" is a random encoder (``pretrain.steps: 0``), SimMIM for n steps, or a
    weights file (``model.weights``), which no single setting spans."""

    label: str  # what the figures call it, e.g. "foundation"
    set: tuple[tuple[str, Any], ...] = ()  # (dotted setting, value) pairs; () = the profile's own

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.set)


@dataclass(frozen=True)
class KnobConfig:
    """One knob of a sweep (the regime study, the previews' sensitivity): a dotted profile setting
    and the values it takes, or (no key) values that are :class:`KnobPoint` s."""

    name: str  # what the figure calls it, e.g. "pretraining"
    key: str = ""  # the setting it moves, e.g. "pretrain.steps"; "" when every value is a KnobPoint
    values: tuple[Any, ...] = ()  # each a valid value of that setting (a list for tasks)
    note: str = ""  # one line on what the knob stands for

    def settings(self, value: Any) -> dict[str, Any]:
        """The dotted settings that ``value`` of this knob applies."""
        return value.settings if isinstance(value, KnobPoint) else {self.key: value}


@dataclass(frozen=True)
class PreviewsConfig:
    """Previews of weighted multi-task finetuning by Bayesian merging (notebook 05)."""

    tasks: tuple[str, ...] = ("segmentation", "depth")  # 2 tasks: alpha on [0, 1]; 3: the simplex
    n_alpha: int = 9  # grid points per edge of the simplex
    steps: int = 0  # full-phase steps of every run (posteriors and ground truth); 0 = finetune.steps
    seeds: tuple[int, ...] = (0, 1, 2)  # per-task runs (AdamW and IVON): the previews' seed spread
    components: int = 3  # K of MultiIVON-Hess: IVON runs of the first K seeds, one mixture per task
    gt_seeds: tuple[int, ...] = (0,)  # seeds of the ground-truth grid (weighted finetuning)
    prior_rel: float = 1e-2  # prior precision at θ0 = prior_rel × median posterior precision
    sg_estimator: str = "adam"  # AdamW-SG precision: adam (final exp_avg_sq) | gradsq (a g² pass)
    sg_batches: int = 16  # minibatches of the g² pass
    realign_samples: int = 500  # head realignment of each previewed encoder: labelled samples
    realign_steps: int = 100  # ... and steps (on cached features, realign.head_lr)
    em_iters: int = 50  # MultiIVON: EM iterations at most
    # IVON-Hess (first seed) re-previewed with one preview-only setting moved at a time: is a miss
    # a matter of settings? Keys: PREVIEW_KNOBS; the profile's own value joins every sweep
    sensitivity: tuple[KnobConfig, ...] = ()


@dataclass(frozen=True)
class RegimeConfig:
    """The regime study (notebook 06): one knob at a time around the profile's own settings."""

    seeds: tuple[int, ...] = (0, 1)
    knobs: tuple[KnobConfig, ...] = ()
    methods: tuple[str, ...] = ("task_arithmetic", "ties")  # merged, then head- and repr-realigned


@dataclass(frozen=True)
class JobsConfig:
    """How independent jobs (seeds, tasks, λ values) run: see :mod:`simo.jobs`."""

    executor: str = "local"  # local | submitit-local | slurm
    workers: int = 1  # jobs at once; 1 (local) = each in the notebook's process when it is needed
    threads: int = 0  # torch threads per job; 0 = num_threads // workers
    slurm_partition: str | None = None
    slurm_gpus: int = 1
    slurm_time_min: int = 240


@dataclass(frozen=True)
class Profile:
    name: str
    tasks: tuple[str, ...] = ("segmentation", "depth", "normals")
    seeds: tuple[int, ...] = (0,)
    device: str = "cpu"  # cpu | cuda | auto
    num_threads: int = 2
    eval_batch_size: int = 128
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    foundation: FoundationConfig = field(default_factory=FoundationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    merging: MergeConfig = field(default_factory=MergeConfig)
    realign: RealignConfig = field(default_factory=RealignConfig)
    relations: RelationsConfig = field(default_factory=RelationsConfig)
    previews: PreviewsConfig = field(default_factory=PreviewsConfig)
    regime: RegimeConfig = field(default_factory=RegimeConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def available_profiles() -> list[str]:
    return sorted(p.stem for p in paths.PROFILES.glob("*.yaml"))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against a field type; ints are accepted as floats, lists as tuples."""
    if tp is Any:  # a knob's values: checked when the knob sets them (lists become tuples)
        return _knob_point(value, where) if isinstance(value, Mapping) else _freeze(value)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item,) = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-3 as a string
        except ValueError:
            pass
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")
    return value


def _freeze(value: Any) -> Any:
    """Lists to tuples, recursively: a profile stays hashable whatever a knob holds."""
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def _knob_point(value: Mapping[str, Any], where: str) -> KnobPoint:
    """A knob value written as a mapping: ``{label: str, set: {dotted setting: value}}``."""
    if set(value) != {"label", "set"} or not isinstance(value["label"], str):
        raise ConfigError(f"{where}: a knob value that is a mapping needs exactly 'label' (a "
                          f"name) and 'set' (dotted settings), got {dict(value)!r}")
    try:
        pairs = dict(value["set"] or {})
    except (TypeError, ValueError):
        raise ConfigError(f"{where}.set must map dotted settings to values, "
                          f"got {value['set']!r}") from None
    return KnobPoint(value["label"], tuple((str(k), _freeze(v)) for k, v in pairs.items()))


def _build(cls: type, raw: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ConfigError(one_of(key, names, f"key in {where}" if where else "key"))
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in raw.items()}
    return cls(**kwargs)


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot override {dotted!r}: {p!r} is not a section")
    node[leaf] = value


def load_profile(name: str, overrides: Mapping[str, Any] | None = None) -> Profile:
    """Load ``profiles/<name>.yaml``, apply dotted ``overrides``, validate every key and type."""
    choices = available_profiles()
    if name not in choices:
        raise ConfigError(one_of(name, choices, "profile"))
    raw = yaml.safe_load((paths.PROFILES / f"{name}.yaml").read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"profiles/{name}.yaml must be a mapping of settings")
    raw.setdefault("name", name)
    return _with_overrides(raw, overrides or {})


def with_settings(profile: Profile, settings: Mapping[str, Any]) -> Profile:
    """``profile`` with dotted ``settings`` changed, validated like a loaded profile (a regime
    knob's value, or any override, applied to an already-resolved profile)."""
    return _with_overrides(dataclasses.asdict(profile), settings)


def _with_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> Profile:
    """The validated profile of ``raw`` settings with dotted ``overrides`` applied."""
    for dotted, value in overrides.items():
        _set_dotted(raw, dotted, value)
    profile = _dataset_defaults(_build(Profile, raw, ""))
    _check_values(profile)
    return profile


def setting(profile: Profile, dotted: str) -> Any:
    """The value of a dotted profile setting (``"finetune.lr"``, ``"tasks"``); AttributeError if
    there is none."""
    section, *rest = dotted.split(".")
    node = getattr(profile, section)
    return getattr(node, rest[0]) if rest else node


def knob_profiles(profile: Profile, knob: KnobConfig, where: str,
                  values: Sequence[Any] | None = None) -> list[tuple[Any, Profile]]:
    """``(value, profile with knob.key = value)`` for each of ``values`` (default: the knob's);
    a value the profile rejects is a one-line error naming the knob and the value."""
    out = []
    for v in knob.values if values is None else values:
        try:
            out.append((v, with_settings(profile, knob.settings(v))))
        except ConfigError as e:
            raise ConfigError(f"{where} knob {knob.name!r}, value {v!r}: {e}") from None
    return out


def _dataset_defaults(p: Profile) -> Profile:
    """Fill in what the dataset decides: its number of classes, and ``{data_root}`` in
    ``model.weights`` (so a profile can say "the DINOv2 file next to the datasets")."""
    d, m = p.data, p.model
    if d.num_classes is None:
        d = dataclasses.replace(d, num_classes=DATASET_CLASSES.get(d.dataset, (6,))[0])
    if m.weights and "{data_root}" in m.weights and d.data_root:
        m = dataclasses.replace(m, weights=m.weights.replace("{data_root}", d.data_root))
    return dataclasses.replace(p, data=d, model=m)


def _check_task_names(names: Sequence[str], what: str) -> None:
    from simo.tasks import TASK_NAMES  # local: tasks imports torch

    for t in names:
        if t not in TASK_NAMES:
            raise ConfigError(one_of(t, TASK_NAMES, what))


def _check_values(p: Profile) -> None:
    _check_task_names(p.tasks, "task")
    if len(set(p.tasks)) != len(p.tasks) or not p.tasks:
        raise ConfigError(f"tasks must be a non-empty list without repeats, got {list(p.tasks)}")
    if not p.seeds:
        raise ConfigError("seeds must list at least one seed, e.g. seeds: [0]")
    if p.device not in ("cpu", "cuda", "auto"):
        raise ConfigError(one_of(p.device, ("cpu", "cuda", "auto"), "device"))
    if p.data.dataset not in DATASETS:
        raise ConfigError(one_of(p.data.dataset, DATASETS, "dataset"))
    classes = DATASET_CLASSES.get(p.data.dataset)
    if classes and p.data.num_classes not in classes:
        raise ConfigError(f"data.num_classes {p.data.num_classes} does not fit {p.data.dataset}: "
                          f"choose one of {', '.join(map(str, classes))} (or leave it unset)")
    if not p.finetune.scales or min(p.finetune.scales) < 1.0:
        raise ConfigError(f"finetune.scales must be zoom factors >= 1, e.g. [1.0, 1.2, 1.5], got "
                          f"{list(p.finetune.scales)}")
    if p.model.head not in ("linear", "dpt"):
        raise ConfigError(one_of(p.model.head, ("linear", "dpt"), "model.head"))
    for f in ("patch_size", "embed_dim", "depth", "num_heads"):
        if getattr(p.model, f) < 1:
            raise ConfigError(f"model.{f} must be >= 1, got {getattr(p.model, f)}")
    if p.model.embed_dim % p.model.num_heads:
        raise ConfigError(f"model.embed_dim ({p.model.embed_dim}) must be divisible by "
                          f"model.num_heads ({p.model.num_heads})")
    bad = [b for b in p.model.feature_blocks if not 0 <= b < p.model.depth]
    if bad:
        raise ConfigError(f"model.feature_blocks {bad} out of range for depth {p.model.depth}")
    if not 0.0 < p.pretrain.mask_ratio < 1.0:
        raise ConfigError(f"pretrain.mask_ratio must be in (0, 1), got {p.pretrain.mask_ratio}")
    fd = p.foundation
    if fd.objective not in OBJECTIVES:
        raise ConfigError(one_of(fd.objective, OBJECTIVES, "foundation.objective"))
    if not 0.0 <= fd.mask_ratio < 1.0:
        raise ConfigError(f"foundation.mask_ratio must be in [0, 1), got {fd.mask_ratio}")
    if fd.steps < 1 or fd.n_scenes < fd.batch_size or fd.batch_size < 1:
        raise ConfigError(f"foundation needs steps >= 1 and n_scenes >= batch_size >= 1, got "
                          f"steps={fd.steps}, n_scenes={fd.n_scenes}, batch_size={fd.batch_size}")
    if p.jobs.executor not in EXECUTORS:
        raise ConfigError(one_of(p.jobs.executor, EXECUTORS, "jobs.executor"))
    if p.jobs.workers < 1:
        raise ConfigError(f"jobs.workers must be >= 1, got {p.jobs.workers}")
    for split in ("n_train", "n_val", "n_test"):
        if getattr(p.data, split) < 1:
            raise ConfigError(f"data.{split} must be >= 1 (an empty {split[2:]} split), got "
                              f"{getattr(p.data, split)}")
    if p.relations.lam_step <= 0 or p.relations.lam_max <= 0 or not p.relations.pair_seeds:
        raise ConfigError("relations: lam_step and lam_max must be > 0 and pair_seeds non-empty, "
                          f"got {p.relations}")
    pv = p.previews
    _check_task_names(pv.tasks, "previews task")
    if len(set(pv.tasks)) != len(pv.tasks) or len(pv.tasks) < 2:
        raise ConfigError(f"previews.tasks must list at least two different tasks, got "
                          f"{list(pv.tasks)}")
    if pv.n_alpha < len(pv.tasks) + 1:
        raise ConfigError(f"previews.n_alpha must be >= {len(pv.tasks) + 1} for "
                          f"{len(pv.tasks)} tasks (the grid needs an α that weighs every task), "
                          f"got {pv.n_alpha}")
    if not pv.seeds or not pv.gt_seeds:
        raise ConfigError(f"previews.seeds and previews.gt_seeds must be non-empty, got "
                          f"seeds={list(pv.seeds)}, gt_seeds={list(pv.gt_seeds)}")
    if not 1 <= pv.components <= len(pv.seeds):
        raise ConfigError(f"previews.components ({pv.components}) must be between 1 and the "
                          f"number of previews.seeds ({len(pv.seeds)})")
    if pv.sg_estimator not in SG_ESTIMATORS:
        raise ConfigError(one_of(pv.sg_estimator, SG_ESTIMATORS, "previews.sg_estimator"))
    if not pv.prior_rel > 0:
        raise ConfigError(f"previews.prior_rel must be > 0, got {pv.prior_rel}")
    ft = p.finetune
    for k in ("ivon_lr", "ivon_head_lr", "ivon_ess", "ivon_hess_init"):
        if not getattr(ft, k) > 0:
            raise ConfigError(f"finetune.{k} must be > 0, got {getattr(ft, k)}")
    if not 0 < ft.ivon_beta2 < 1:
        raise ConfigError(f"finetune.ivon_beta2 must be in (0, 1), got {ft.ivon_beta2}")
    rg = p.regime
    if not rg.seeds:
        raise ConfigError("regime.seeds must list at least one seed, e.g. [0, 1]")
    _check_knobs("regime", rg.knobs, p)
    _check_knobs("previews.sensitivity", pv.sensitivity, p, PREVIEW_KNOBS)
    for sec in ("pretrain", "foundation", "finetune", "realign", "relations", "previews", "jobs"):
        for f in dataclasses.fields(getattr(p, sec)):
            v = getattr(getattr(p, sec), f.name)
            if isinstance(v, (int, float)) and v < 0:
                raise ConfigError(f"{sec}.{f.name} must be >= 0, got {v}")


def _check_knobs(where: str, knobs: Sequence[KnobConfig], p: Profile,
                 allowed: Sequence[str] | None = None) -> None:
    """Distinct names, some values, and a key that names a setting (one of ``allowed`` if given);
    each value is checked when a sweep applies it."""
    names = [k.name for k in knobs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where} knobs must have different names, got {names}")
    for k in knobs:
        if not k.values:
            raise ConfigError(f"{where} knob {k.name!r} lists no values")
        points = [isinstance(v, KnobPoint) for v in k.values]
        if any(points) and (allowed is not None or not all(points)):
            raise ConfigError(f"{where} knob {k.name!r}: " + (
                "its values must be plain values of its key" if allowed is not None else
                "give every value as {label, set}, or none (they cannot be mixed)"))
        if any(points):
            if len({v.label for v in k.values}) != len(k.values):
                raise ConfigError(f"{where} knob {k.name!r}: its values need different labels")
            continue  # each point's settings are checked when a sweep applies them
        if allowed is not None and k.key not in allowed:
            raise ConfigError(f"{where} knob {k.name!r}: {one_of(k.key, allowed, 'key')}")
        try:
            setting(p, k.key)
        except AttributeError:
            raise ConfigError(f"{where} knob {k.name!r}: {k.key!r} is not a profile setting "
                              f"(e.g. pretrain.steps, model.embed_dim, tasks)") from None


DATASETS = ("scenes", "nyuv2", "cityscapes", "taskonomy")
EXECUTORS = ("local", "submitit-local", "slurm")  # where simo.jobs runs independent steps
OBJECTIVES = ("aux", "simmim")  # the foundation encoder's pretraining objectives
SG_ESTIMATORS = ("adam", "gradsq")
# settings that change only the preview step, not any run a preview reads (a sweep stays cheap)
PREVIEW_KNOBS = ("previews.prior_rel", "previews.realign_steps", "previews.realign_samples",
                 "previews.em_iters")
# Segmentation classes a real dataset ships, the default first: NYUv2's 13-class MTAN labels;
# Cityscapes' 19 classes (label_19) or 7 categories (label_7). Others: 6 (what scenes render).
DATASET_CLASSES: dict[str, tuple[int, ...]] = {"nyuv2": (13,), "cityscapes": (19, 7)}


def _names(value: Any) -> list:
    """A list, or a comma-separated string as papermill passes it (``-p tasks depth,normals``)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def resolve(profile: str = "tiny", *, seed: int | None = None, seeds: Any = None,
            tasks: Any = None, dataset: str | None = None, data_root: str | None = None,
            overrides: Mapping[str, Any] | None = None) -> Profile:
    """Turn a notebook's ``parameters`` cell into a validated profile.

    ``None`` keeps the profile's value; ``seed`` (one) and ``seeds`` (several) set the profile's
    seeds; ``tasks`` and ``seeds`` may be lists or comma-separated strings.
    """
    ov: dict[str, Any] = dict(overrides or {})
    if not isinstance(profile, str):
        raise ConfigError(f"profile must be a name such as 'tiny', got {profile!r}")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        ov["seeds"] = [seed]
    if seeds is not None:
        if seed is not None:
            raise ConfigError("give either seed or seeds, not both")
        try:
            ov["seeds"] = [int(s) for s in _names(seeds)]
        except (TypeError, ValueError):
            raise ConfigError(f"seeds must be integers, e.g. [0, 1, 2] or '0,1,2'; got {seeds!r}")
    if tasks is not None:
        ov["tasks"] = _names(tasks)
    if dataset is not None:
        own = load_profile(profile).data.dataset
        if own != "scenes" and dataset != own:
            raise ConfigError(f"profile {profile!r} is made for {own}, not {dataset!r}: pass "
                              f"dataset={own!r} (-p dataset {own})")
        ov["data.dataset"] = dataset
    if data_root is not None:
        ov["data.data_root"] = str(data_root)
    return load_profile(profile, ov)
