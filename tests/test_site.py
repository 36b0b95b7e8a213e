"""The rendered study: cleaned executed notebooks, the static site, and its check in a browser."""
from __future__ import annotations

import base64
import io
import shutil

import matplotlib.pyplot as plt
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from simo import site


def _png() -> str:
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _executed() -> nbformat.NotebookNode:
    """What papermill leaves: widget bars, tqdm residue on stderr, a path echo, run metadata."""
    cell = new_code_cell("x", outputs=[
        new_output("stream", name="stdout", text="hello\n"),
        new_output("stream", name="stderr",
                   text="fit:  50%|#####     | 1/2 [00:01<00:01]\rfit: 100%|##########| 2/2\n"
                        "UserWarning: a real warning\n"),
        new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {},
                                         "text/plain": "  0%|          | 0/2"}),
        new_output("execute_result", data={"text/plain": "PosixPath('/x/figures/a.png')"},
                   execution_count=1),
        new_output("display_data", data={"image/png": _png(), "text/plain": "<Figure>"})])
    cell.metadata["papermill"] = {"duration": 1.2, "start_time": "2026-12-03T10:00:00"}
    nb = new_notebook(cells=[new_markdown_cell("# 00 · A title\nwhy"), cell])
    nb.metadata.update(widgets={"state": {}}, papermill={"parameters": {}},
                       kernelspec={"name": "python3", "display_name": "Python 3"})
    return nb


def test_clean_keeps_results_and_drops_run_noise():
    nb = site.clean(_executed())
    outs = nb.cells[1].outputs
    assert [o.output_type for o in outs] == ["stream", "stream", "display_data"]
    assert outs[0].text == "hello\n" and outs[1].text == "UserWarning: a real warning\n"
    assert "image/png" in outs[2].data
    assert "widgets" not in nb.metadata and "papermill" not in nb.metadata
    assert "papermill" not in nb.cells[1].metadata
    assert nb.metadata.kernelspec == site.KERNELSPEC


def test_publish_is_atomic_and_readable(tmp_path):
    src = tmp_path / "run.ipynb"
    nbformat.write(_executed(), src)
    dest = site.publish(src, tmp_path / "executed" / "00_data_and_tasks.ipynb")
    assert nbformat.read(dest, as_version=4).cells[1].outputs[0].text == "hello\n"
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]


def test_findings_block_is_read_from_the_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- findings -->\n- merging **loses** 46 points\n<!-- /findings -->\n")
    assert "<strong>loses</strong>" in site.findings(readme)


@pytest.fixture
def small_site(tmp_path):
    src = tmp_path / "executed"
    src.mkdir()
    site.publish(_write(tmp_path / "nb.ipynb"), src / "00_data_and_tasks.ipynb")
    return site.build(tmp_path / "site", src)


def _write(path):
    nbformat.write(_executed(), path)
    return path


def test_build_writes_an_index_and_one_page_per_notebook(small_site):
    index = small_site.read_text()
    assert '<a href="00_data_and_tasks.html">00 · A title</a>' in index
    page = (small_site.parent / "00_data_and_tasks.html").read_text()
    assert "data:image/png;base64" in page and "hello" in page


def test_build_without_executed_notebooks_says_what_to_run(tmp_path):
    with pytest.raises(Exception, match="run `make figures` first"):
        site.build(tmp_path / "site", tmp_path / "nothing")


@pytest.mark.skipif(not any(shutil.which(n) for n in ("chromium", "chromium-browser",
                                                      "google-chrome")),
                    reason="no Chromium on this machine (apt-get install chromium)")
def test_every_page_loads_in_headless_chromium_with_its_images(small_site):
    pages = site.check(small_site.parent)
    assert {"index.html", "00_data_and_tasks.html", "docs/design.html"} <= set(pages)
    assert pages["index.html"][1] >= 1 and pages["00_data_and_tasks.html"][1] >= 1
    for page, (ok, total) in pages.items():
        assert total >= 0 and ok == total, page
    shots = small_site.parent / "screenshots"
    assert (shots / "index.png").stat().st_size > 1000


def test_docs_are_rendered_with_github_anchors_and_working_links(small_site):
    papers = (small_site.parent / "docs" / "papers.html").read_text()
    assert '<h3 id="simo-headline-numbers">' in papers
    page = (small_site.parent / "00_data_and_tasks.html").read_text()
    assert "../docs/" not in page
    running = (small_site.parent / "docs" / "running.html").read_text()
    assert 'href="benchmarks.html' in running and 'href="benchmarks.md' not in running
