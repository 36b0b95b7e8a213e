"""The batch CLI: selection, summary, one-line errors (notebook execution is in test_notebooks)."""
from __future__ import annotations

import pytest

from simo import runner
from simo.__main__ import main
from simo.errors import ConfigError


def test_select_by_prefix_keeps_pipeline_order():
    assert runner.select(["01", "00"]) == ["00_data_and_tasks", "01_pretrain_and_finetune"]
    assert runner.select(None) == list(runner.NOTEBOOKS)


def test_select_unknown_lists_choices():
    with pytest.raises(ConfigError, match="unknown notebook '99'; choose one of: 00_data"):
        runner.select(["99"])


def test_cli_unknown_profile_is_one_line(capsys):
    assert main(["figures", "--profile", "huge"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown profile 'huge'; choose one of:") and "tiny" in err
    assert "\n" not in err


def test_cli_list(capsys):
    assert main(["list"]) == 0
    assert "01_pretrain_and_finetune" in capsys.readouterr().out


def test_summary_table_and_error_line():
    recs = [runner.RunRecord("00_data_and_tasks", "ok", 1.5, 3),
            runner.RunRecord("01_pretrain_and_finetune", "failed", 2.0, 0, "cell 4: DataError: x")]
    text = runner.summary(recs)
    assert "00_data_and_tasks" in text and "total" in text and "3.5" in text
    assert text.splitlines()[-1] == "error: 01_pretrain_and_finetune failed in cell 4: DataError: x"


@pytest.mark.parametrize("text,value", [("3", 3), ("0.5", 0.5), ("null", None),
                                        ("[a, b]", ["a", "b"]), ("depth,normals", "depth,normals")])
def test_parse_value(text, value):
    assert runner.parse_value(text) == value
