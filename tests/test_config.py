"""Profiles load, overrides apply, and every mistake is a one-line ConfigError that says what to fix."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from simo import paths
from simo.config import (DATASETS, Profile, available_profiles, load_profile, resolve)
from simo.errors import ConfigError
from simo.tasks import TASK_NAMES


def _err(name: str = "smoke", overrides=None, **kw) -> str:
    """The message of the ConfigError raised by loading ``name`` with ``overrides``; one line."""
    with pytest.raises(ConfigError) as ei:
        if kw:
            resolve(name, overrides=overrides, **kw)
        else:
            load_profile(name, overrides)
    msg = str(ei.value)
    assert msg and "\n" not in msg, f"not a one-line message: {msg!r}"
    return msg


# ------------------------------------------------------------------------------- loading


def test_profiles_directory_is_listed():
    names = available_profiles()
    assert {"smoke", "tiny"} <= set(names)
    assert names == sorted(p.stem for p in paths.PROFILES.glob("*.yaml"))


@pytest.mark.parametrize("name", available_profiles())
def test_every_profile_loads_and_is_valid(name):
    p = load_profile(name)
    assert isinstance(p, Profile)
    assert p.name == name
    assert p.tasks and set(p.tasks) <= set(TASK_NAMES)
    assert p.data.dataset in DATASETS
    assert p.model.embed_dim % p.model.num_heads == 0
    assert all(0 <= b < p.model.depth for b in p.model.feature_blocks)
    assert isinstance(p.model.feature_blocks, tuple) and isinstance(p.tasks, tuple)
    assert isinstance(p.finetune.lr, float) and isinstance(p.pretrain.lr, float)


@pytest.mark.parametrize("name", available_profiles())
def test_yaml_values_reach_the_profile(name):
    raw = yaml.safe_load((paths.PROFILES / f"{name}.yaml").read_text())
    p = load_profile(name)
    for key, value in raw.items():
        sections = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in sections:
            got = getattr(p, key) if sub is None else getattr(getattr(p, key), sub)
            assert _matches(got, v), (key, sub)


def _matches(got, want) -> bool:
    """YAML ``want`` reached the profile as ``got`` (lists as tuples, mappings as dataclasses or,
    for a knob point's settings, as (key, value) pairs; keys a mapping leaves out keep their
    defaults)."""
    if isinstance(want, dict) and isinstance(got, tuple):
        return dict(got).keys() == want.keys() and all(
            _matches(dict(got)[k], w) for k, w in want.items())
    if isinstance(want, dict):
        return all(_matches(getattr(got, k), w) for k, w in want.items())
    if isinstance(want, list):
        return isinstance(got, tuple) and len(got) == len(want) and all(
            _matches(g, w) for g, w in zip(got, want))
    return got == want


def test_float_written_with_exponent_parses():
    # tiny.yaml writes lr: 1.0e-3; a string such as "1e-3" (how YAML reads 1e-3) parses too
    assert load_profile("tiny").pretrain.lr == pytest.approx(1e-3)
    assert load_profile("smoke", {"finetune.lr": "1e-3"}).finetune.lr == 1e-3
    assert load_profile("smoke", {"finetune.lr": 2}).finetune.lr == 2.0
    assert isinstance(load_profile("smoke", {"finetune.lr": 2}).finetune.lr, float)


def test_profile_is_frozen():
    p = load_profile("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.seeds = (1,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.finetune.steps = 3


def test_to_dict_round_trips_nested_sections():
    p = load_profile("smoke")
    d = p.to_dict()
    assert d["model"]["embed_dim"] == p.model.embed_dim
    assert d["finetune"]["ckpt_every"] == p.finetune.ckpt_every
    assert d["tasks"] == p.tasks and d["name"] == "smoke"


# ------------------------------------------------------------------------------- overrides


def test_dotted_overrides_apply_and_leave_the_rest():
    base = load_profile("smoke")
    p = load_profile("smoke", {"finetune.steps": 7, "model.feature_blocks": [1],
                               "data.data_root": "/x", "seeds": [3, 4]})
    assert p.finetune.steps == 7 and p.model.feature_blocks == (1,) and p.seeds == (3, 4)
    assert p.data.data_root == "/x"
    assert p.finetune.head_steps == base.finetune.head_steps
    assert p.data.image_size == base.data.image_size
    assert load_profile("smoke") == base  # overrides never leak into the next load


def test_override_into_a_value_is_rejected():
    msg = _err(overrides={"data.image_size.x": 1})
    assert "image_size" in msg and "section" in msg


def test_resolve_accepts_comma_separated_tasks_and_seed():
    p = resolve("smoke", tasks="depth, normals", seed=5)
    assert p.tasks == ("depth", "normals")
    assert p.seeds == (5,)
    assert resolve("smoke", tasks=["segmentation"]).tasks == ("segmentation",)
    assert resolve("smoke", dataset="nyuv2", data_root="/d").data.data_root == "/d"
    assert resolve("smoke").tasks == load_profile("smoke").tasks  # None keeps the profile's value


def test_resolve_rejects_bad_seed_and_profile_type():
    assert "seed" in _err(seed="1")
    assert "seed" in _err(seed=True)
    with pytest.raises(ConfigError, match="profile"):
        resolve(3)


# ------------------------------------------------------------------------------- errors


def test_unknown_profile_lists_profiles():
    msg = _err("nope")
    assert "'nope'" in msg and "choose one of" in msg
    for name in available_profiles():
        assert name in msg


@pytest.mark.parametrize("key,section,valid", [
    ("foo", "", "finetune"),
    ("data.foo", "data", "image_size"),
    ("model.foo", "model", "feature_blocks"),
    ("finetune.stepz", "finetune", "ckpt_every"),
])
def test_unknown_key_lists_valid_keys(key, section, valid):
    msg = _err(overrides={key: 1})
    assert "'" + key.split(".")[-1] + "'" in msg
    assert "choose one of" in msg and valid in msg
    if section:
        assert section in msg
    assert "  " not in msg  # no hole where the section name would go


@pytest.mark.parametrize("key,value,expect", [
    ("finetune.steps", "10", "finetune.steps must be int"),
    ("finetune.steps", True, "finetune.steps must be int"),
    ("finetune.steps", 1.5, "finetune.steps must be int"),
    ("data.image_size", None, "data.image_size must be int"),
    ("tasks", "depth", "tasks must be a list"),
    ("model.feature_blocks", 1, "model.feature_blocks must be a list"),
    ("model.feature_blocks", [0, "1"], "model.feature_blocks[1] must be int, got '1'"),
    ("finetune.lr", "fast", "finetune.lr must be float"),
    ("finetune.lr", False, "finetune.lr must be float"),
    ("data", 3, "data must be a mapping"),
])
def test_wrong_type_names_the_key_and_the_type(key, value, expect):
    msg = _err(overrides={key: value})
    assert expect in msg
    assert "got " + repr(value if not isinstance(value, list) else value[-1]) in msg


def test_unknown_task_lists_tasks():
    msg = _err(overrides={"tasks": ["depth", "colour"]})
    assert "'colour'" in msg and "choose one of" in msg
    for t in TASK_NAMES:
        assert t in msg
    assert "choose one of" in _err(tasks="depth,colour")


def test_duplicate_and_empty_tasks():
    assert "repeats" in _err(overrides={"tasks": ["depth", "depth"]})
    assert "repeats" in _err(overrides={"tasks": []})


def test_bad_device_and_dataset_and_head():
    msg = _err(overrides={"device": "tpu"})
    assert "'tpu'" in msg and "choose one of" in msg and "cuda" in msg and "auto" in msg
    msg = _err(overrides={"data.dataset": "imagenet"})
    assert "choose one of" in msg and all(d in msg for d in DATASETS)
    msg = _err(overrides={"model.head": "mlp"})
    assert "choose one of" in msg and "linear" in msg and "dpt" in msg


def test_embed_dim_not_divisible_by_heads():
    msg = _err(overrides={"model.embed_dim": 30, "model.num_heads": 4})
    assert "embed_dim" in msg and "divisible" in msg and "30" in msg and "4" in msg


@pytest.mark.parametrize("key", ["model.num_heads", "model.depth", "model.embed_dim",
                                 "model.patch_size"])
def test_model_sizes_must_be_positive(key):
    msg = _err(overrides={key: 0})
    assert key in msg


@pytest.mark.parametrize("blocks", [[0, 2], [-1], [5]])
def test_feature_block_out_of_range(blocks):
    msg = _err(overrides={"model.depth": 2, "model.feature_blocks": blocks})
    assert "feature_blocks" in msg and "depth 2" in msg


def test_value_ranges():
    assert "mask_ratio" in _err(overrides={"pretrain.mask_ratio": 1.0})
    assert "finetune.lr must be >= 0" in _err(overrides={"finetune.lr": -1e-3})
    assert "pretrain.steps must be >= 0" in _err(overrides={"pretrain.steps": -1})


def test_seeds_accept_lists_and_comma_strings_and_conflict_with_seed():
    assert resolve("smoke", seeds="0, 2,5").seeds == (0, 2, 5)
    assert resolve("smoke", seeds=[3]).seeds == (3,)
    with pytest.raises(ConfigError, match="either seed or seeds"):
        resolve("smoke", seed=1, seeds=[0, 1])
    with pytest.raises(ConfigError, match="seeds must be integers"):
        resolve("smoke", seeds="0,a")


def test_previews_section_is_checked():
    assert "previews task" in _err(overrides={"previews.tasks": ["depth", "colour"]})
    assert "at least two different" in _err(overrides={"previews.tasks": ["depth", "depth"]})
    assert "at least two different" in _err(overrides={"previews.tasks": ["depth"]})
    assert "n_alpha must be >= 3 for 2 tasks" in _err(overrides={"previews.n_alpha": 2})
    msg = _err(overrides={"previews.n_alpha": 3, "previews.tasks": ["depth", "normals", "edges"]})
    assert "n_alpha must be >= 4 for 3 tasks" in msg
    assert "gt_seeds" in _err(overrides={"previews.gt_seeds": []})
    msg = _err(overrides={"previews.components": 3, "previews.seeds": [0, 1]})
    assert "components (3)" in msg and "previews.seeds (2)" in msg
    msg = _err(overrides={"previews.sg_estimator": "fisher"})
    assert "'fisher'" in msg and "adam" in msg and "gradsq" in msg
    assert "finetune.ivon_ess must be > 0, got 0" in _err(overrides={"finetune.ivon_ess": 0})
    assert "previews.prior_rel must be > 0" in _err(overrides={"previews.prior_rel": 0.0})
    assert "ivon_beta2 must be in (0, 1), got 1.0" in _err(overrides={"finetune.ivon_beta2": 1.0})
    ok = load_profile("smoke", {"previews.tasks": ["depth", "normals", "edges"],
                                "previews.n_alpha": 4})
    assert ok.previews.tasks == ("depth", "normals", "edges")


# ------------------------------------------------------------------------------- regime section


def test_regime_knobs_load_as_hashable_values():
    p = load_profile("regime")
    knobs = {k.name: k for k in p.regime.knobs}
    assert len(knobs) >= 4  # the issue: at least four knobs swept
    assert knobs["tasks"].values[1] == ("depth", "normals")  # lists become tuples
    # a {label, set} value moves several settings; the foundation point keeps the profile's own
    pre = knobs["pretraining"]
    assert [v.label for v in pre.values] == ["random", "SimMIM 250", "SimMIM 1000", "foundation"]
    assert pre.settings(pre.values[0]) == {"model.weights": None, "pretrain.steps": 0}
    assert pre.settings(pre.values[-1]) == {} and knobs["tasks"].settings(("depth",)) == {
        "tasks": ("depth",)}
    hash(p)  # a profile keys caches and lru_caches: it must stay hashable


@pytest.mark.parametrize("knobs,expect", [
    ([{"name": "w", "key": "model.widht", "values": [1]}], "'model.widht' is not a profile setting"),
    ([{"name": "w", "key": "model.embed_dim", "values": []}], "knob 'w' lists no values"),
    ([{"name": "w", "key": "model.embed_dim", "values": [8]}] * 2, "must have different names"),
    ([{"name": "w", "key": "model.embed_dim"}], "knob 'w' lists no values"),
    ([{"name": "w", "kee": "model.embed_dim"}], "unknown key in regime.knobs[0] 'kee'"),
    ([{"name": "p", "values": [{"label": "a"}]}], "needs exactly 'label' (a name) and 'set'"),
    ([{"name": "p", "values": [{"label": "a", "set": 3}]}], ".set must map dotted settings"),
    ([{"name": "p", "values": [{"label": "a", "set": {}}, 5]}], "cannot be mixed"),
    ([{"name": "p", "values": [{"label": "a", "set": {}}, {"label": "a", "set": {}}]}],
     "knob 'p': its values need different labels"),
])
def test_bad_regime_knobs_are_one_line_errors(knobs, expect):
    assert expect in _err(overrides={"regime.knobs": knobs})


@pytest.mark.parametrize("knobs,expect", [
    ([{"name": "s", "key": "previews.steps", "values": [5]}],  # would retrain: not a preview knob
     "previews.sensitivity knob 's': unknown key 'previews.steps'; choose one of: previews.prior_rel"),
    ([{"name": "s", "key": "previews.prior_rel", "values": []}], "knob 's' lists no values"),
    ([{"name": "s", "values": [{"label": "a", "set": {"previews.prior_rel": 1.0}}]}],
     "knob 's': its values must be plain values of its key"),
])
def test_bad_sensitivity_knobs_are_one_line_errors(knobs, expect):
    assert expect in _err(overrides={"previews.sensitivity": knobs})


def test_with_settings_validates_and_leaves_the_rest():
    from simo.config import with_settings

    base = load_profile("smoke")
    p = with_settings(base, {"tasks": ["depth", "edges"], "finetune.lr": 2e-3})
    assert p.tasks == ("depth", "edges") and p.finetune.lr == 2e-3
    assert p.model == base.model and p.realign == base.realign and p.name == "smoke"
    with pytest.raises(ConfigError, match="unknown task 'dpth'"):
        with_settings(base, {"tasks": ["dpth"]})
    with pytest.raises(ConfigError, match="unknown key in model 'widht'; choose one of: arch"):
        with_settings(base, {"model.widht": 3})
    with pytest.raises(ConfigError, match="must be divisible"):
        with_settings(base, {"model.embed_dim": 33})
