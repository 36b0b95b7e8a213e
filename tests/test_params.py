"""Notebook parameters: declared types, command-line parsing, validation before any kernel starts,
and the rule that only a run at the exact defaults writes the gallery."""
from __future__ import annotations

import json

import pytest

from simo import params, paths, runner
from simo.__main__ import main
from simo.errors import ConfigError

CELL = '''profile: str = "tiny"  # the scale
seed: int = 0  # a seed
tasks: list[str] | None = None  # None: all
lams: list[float] = [0.5, 1.0]  # grid
overrides: dict = {}  # dotted
'''


def test_parse_cell_reads_types_defaults_and_docs():
    d = params.parse_cell(CELL)
    assert list(d) == ["profile", "seed", "tasks", "lams", "overrides"]
    assert d["tasks"].type == "list[str] | None" and d["tasks"].optional
    assert d["tasks"].base == "list[str]" and d["lams"].default == [0.5, 1.0]
    assert d["seed"].doc == "a seed"


@pytest.mark.parametrize("source,match", [("seed = 0  # untyped", "line 1 is not"),
                                          ("seed: tuple = (0,)", "unsupported type"),
                                          ("seed: int = len([])", "must be a literal")])
def test_parse_cell_rejects_what_it_cannot_declare(source, match):
    with pytest.raises(ConfigError, match=match):
        params.parse_cell(source)


@pytest.mark.parametrize("name,text,value", [
    ("seed", "3", 3), ("tasks", "depth,normals", ["depth", "normals"]),
    ("tasks", "[depth, normals]", ["depth", "normals"]), ("tasks", "null", None),
    ("lams", "0.5,1", [0.5, 1.0]), ("overrides", "{finetune.steps: 5}", {"finetune.steps": 5}),
    ("profile", "smoke", "smoke")])
def test_command_line_text_is_parsed_by_the_declared_type(name, text, value):
    assert params.from_text(params.parse_cell(CELL)[name], text) == value


@pytest.mark.parametrize("name,text,match", [
    ("seed", "x", "'seed' must be int, got 'x'"), ("lams", "0.5,x", "must be list\\[float\\]"),
    ("seed", "null", "may not be None"), ("tasks", "1", None)])
def test_bad_command_line_values_are_one_line_errors(name, text, match):
    p = params.parse_cell(CELL)[name]
    if match is None:  # a str list accepts any text
        assert params.from_text(p, text) == ["1"]
        return
    with pytest.raises(ConfigError, match=match) as e:
        params.from_text(p, text)
    assert "\n" not in str(e.value)


def test_a_string_where_a_list_is_declared_says_how_to_write_it():
    with pytest.raises(ConfigError, match=r"must be a list .*-p methods"):
        params.validate("02_misalignment", {"methods": "task_arithmetic,ties"})


@pytest.mark.parametrize("values,match", [
    ({"methods": ["task_arithmetic", "tie"]}, "unknown value for methods 'tie'"),
    ({"convention": "relativ"}, "unknown value for convention 'relativ'"),
    ({"tasks": ["depht"]}, "unknown value for tasks 'depht'"),
    ({"profile": "huge"}, "unknown value for profile 'huge'"),
    ({"overrides": {"finetune.stepz": 3}}, "unknown key in finetune 'stepz'"),
    ({"lamda": 1}, "unknown parameter 'lamda' for notebook 02_misalignment; valid: profile")])
def test_validation_catches_bad_values_with_one_line(values, match):
    with pytest.raises(ConfigError, match=match) as e:
        params.validate("02_misalignment", values)
    assert "\n" not in str(e.value)


def test_regime_knob_names_are_checked_against_the_profile():
    assert params.validate("06_regimes", {"profile": "smoke", "knobs": None}) == \
        {"profile": "smoke", "knobs": None}
    with pytest.raises(ConfigError, match="unknown knob of profile smoke 'widht'"):
        params.validate("06_regimes", {"profile": "smoke", "knobs": ["widht"]})


@pytest.mark.parametrize("notebook", list(runner.NOTEBOOKS))
def test_every_notebook_declares_typed_parameters_whose_defaults_validate(notebook):
    decl = params.declared(notebook)
    assert "profile" in decl and ("seed" in decl or "seeds" in decl)
    assert all(p.doc for p in decl.values()), "every parameter has a one-line doc"
    assert params.validate(notebook, params.defaults(notebook)) == params.defaults(notebook)
    assert params.changes(notebook, params.defaults(notebook)) == {}


@pytest.mark.parametrize("notebook", list(runner.NOTEBOOKS))
def test_every_notebook_names_the_registered_kernel(notebook):
    from simo.site import KERNELSPEC

    nb = json.loads(params.notebook_path(notebook).read_text())
    assert nb["metadata"]["kernelspec"] == KERNELSPEC
    make = (paths.ROOT / "Makefile").read_text()
    # what the install (for the venv) and `make lab` (for the user) register
    assert f"KERNEL := {KERNELSPEC['name']}" in make and make.count("--name $(KERNEL)") == 2


def test_changes_and_run_ids():
    nb = "00_data_and_tasks"
    assert params.changes(nb, {"profile": "smoke", "seed": 0, "overrides": {}}) == {}
    # execution-only settings do not make a run non-default
    assert params.changes(nb, {"overrides": {"jobs.workers": 4, "jobs.executor": "slurm"}}) == {}
    assert params.changes(nb, {"data_root": "/data/nyuv2"}) == {}  # where the data lies
    assert params.changes(nb, {"seed": 1}) == {"seed": 1}
    assert params.run_id("tiny", {"seed": 1}) == "tiny-seed1"
    rid = params.run_id("tiny", {"overrides": {"finetune.steps": 750}})
    assert rid.startswith("tiny-") and len(rid) == 15
    assert rid == params.run_id("tiny", {"overrides": {"finetune.steps": 750}})  # stable
    assert rid != params.run_id("tiny", {"overrides": {"finetune.steps": 751}})


def test_only_the_exact_defaults_write_the_gallery():
    nb = "00_data_and_tasks"
    assert runner.destination(nb, "tiny", {"profile": "tiny"}) == (None, paths.FIGURES / nb)
    run, where = runner.destination(nb, "tiny", {"profile": "tiny", "seed": 1})
    assert run == "tiny-seed1" and where == paths.RUNS / "tiny-seed1" / nb
    run, where = runner.destination(nb, "tiny", {"profile": "tiny", "n_show": 3,
                                                 "overrides": {"jobs.workers": 2}})
    assert run == "tiny-n_show3" and paths.FIGURES not in where.parents


def test_cli_params_lists_a_notebooks_parameters(capsys):
    assert main(["params", "02"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("02_misalignment: parameters")
    assert "methods" in out and "list[str] | None" in out and "merge methods" in out


def test_cli_parses_lists_and_fails_before_any_kernel(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(runner, "run_notebook", lambda nb, profile, params=None, **k: (
        seen.append(runner.check_parameters(nb, {"profile": profile, **params}, k["text"]))
        or runner.RunRecord(nb, "ok", 0.0, 0)))
    assert main(["figures", "--only", "02", "-p", "methods", "task_arithmetic,ties",
                 "-o", "finetune.steps", "750"]) == 0
    assert seen[0]["methods"] == ["task_arithmetic", "ties"]
    assert seen[0]["overrides"] == {"finetune.steps": 750}
    seen.clear()
    for argv, msg in [(["-p", "methods", "task_arithmetic,tie"], "unknown value for methods 'tie'"),
                      (["-p", "seed:1"], "write the name and the value apart, with a space: "
                                         "-p seed 1"),
                      (["-o", "finetune.steps=750"], "-o finetune.steps 750"),
                      (["-p", "convention", "relativ"], "unknown value for convention")]:
        assert main(["figures", "--only", "02", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and "\n" not in err
    assert not seen, "a bad value started a notebook"


def test_a_profile_given_as_a_parameter_decides_where_the_run_writes(monkeypatch, tmp_cache):
    """`--profile tiny -p profile smoke` runs smoke, so it must neither write nor publish as tiny."""
    import papermill

    calls = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: calls.append(k["parameters"]))
    monkeypatch.setattr("simo.site.publish", lambda *a: pytest.fail("published a smoke run"))
    rec = runner.run_notebook("00_data_and_tasks", "tiny", {"profile": "smoke"})
    assert calls[0]["profile"] == "smoke"
    assert rec.figures_dir == paths.figures_dir("smoke", "00_data_and_tasks")
