"""The study as a reader sees it: cleaned executed notebooks (``executed/``) and a static site.

* :func:`publish` turns a notebook that papermill executed into the copy a reader opens on a
  code-hosting site: outputs kept (figures, tables, the computed "What we saw"), noise removed
  (widget state and its "0%" fallback text, progress-bar residue, path echoes, run timestamps).
* :func:`build` (``make site``) renders ``executed/`` with nbconvert into ``build/site/``: an index
  with the findings (the README's findings block) and the gallery, and one page per notebook.
* :func:`check` loads every page in headless Chromium, counts the images that rendered and takes a
  screenshot of each page: the check a person would do by opening the site.
"""
from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from simo import paths
from simo.errors import ConfigError
from simo.progress import BAR_LINE

KERNELSPEC = {"display_name": "Python (simo-study)", "language": "python", "name": "simo-study"}
_WIDGET = "application/vnd.jupyter.widget-view+json"
_PATH_ECHO = re.compile(r"^(Posix|Windows)?Path\(")
FINDINGS = re.compile(r"<!-- findings -->(.*?)<!-- /findings -->", re.S)


# ------------------------------------------------------------------------------- executed/

def clean(nb: Any) -> Any:
    """Strip what only the run needed from an executed notebook (an ``nbformat`` node, in place)."""
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [o for o in map(_clean_output, cell.outputs) if o is not None]
    return nb


def _clean_output(out: Any) -> Any:
    if out.output_type == "stream":
        if out.name == "stderr":
            kept = [ln for ln in re.split(r"(?<=\n)|\r", out.text) if ln.strip() and not BAR_LINE.search(ln)]
            if not kept:
                return None
            out.text = "".join(ln if ln.endswith("\n") else ln + "\n" for ln in kept)
        return out
    data = out.get("data", {})
    if _WIDGET in data:
        return None
    if set(data) == {"text/plain"} and _PATH_ECHO.match("".join(data["text/plain"])):
        return None
    return out


def publish(executed: Path, dest: Path) -> Path:
    """Write the cleaned copy of ``executed`` to ``dest`` atomically (never half-written)."""
    import nbformat

    nb = clean(nbformat.read(executed, as_version=4))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    nbformat.write(nb, tmp)
    os.replace(tmp, dest)
    return dest


# ------------------------------------------------------------------------------- the site

def _title(nb: Any, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", cell.source, re.M)
            if m:
                return m.group(1).strip()
    return fallback


def findings(readme: Path | None = None) -> str:
    """The README's findings block (between ``<!-- findings -->`` markers), as HTML."""
    import mistune

    text = (readme or paths.ROOT / "README.md").read_text()
    m = FINDINGS.search(text)
    return mistune.html(m.group(1)) if m else ""


def build(out: Path | None = None, source: Path | None = None) -> Path:
    """Render every executed notebook under ``source`` (default ``executed/``) to ``out``
    (default ``build/site/``) with an index page; returns the index."""
    import nbformat
    from nbconvert import HTMLExporter

    from simo.runner import NOTEBOOKS

    source, out = source or paths.EXECUTED, out or paths.BUILD / "site"
    found = [n for n in NOTEBOOKS if (source / f"{n}.ipynb").is_file()]
    if not found:
        raise ConfigError(f"no executed notebooks in {source}: run `make figures` first")
    if out.exists():
        shutil.rmtree(out)
    (out / "figures").mkdir(parents=True)
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    for png in paths.FIGURES.glob("[0-9]*/*.png"):  # every gallery figure (docs pages show them)
        (out / "figures" / png.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(png, out / "figures" / png.parent.name / png.name)
    (out / "weights").mkdir()
    for png in paths.WEIGHTS.glob("*.png"):  # the model card's curves
        shutil.copy2(png, out / "weights" / png.name)
    cards = []
    for name in found:
        nb = nbformat.read(source / f"{name}.ipynb", as_version=4)
        body, _ = exporter.from_notebook_node(nb)
        (out / f"{name}.html").write_text(body)
        thumbs = []
        for png in sorted((paths.FIGURES / name).glob("*.png")):
            rel = Path("figures") / name / png.name
            thumbs.append(f'<a href="{name}.html"><img src="{rel}" alt="{png.stem}" '
                          f'title="{png.stem}"></a>')
        cards.append(f'<section><h2><a href="{name}.html">{html.escape(_title(nb, name))}</a></h2>'
                     f'<p>{html.escape(NOTEBOOKS[name])}</p><div class="thumbs">'
                     f'{"".join(thumbs)}</div></section>')
    _docs(out)
    for page in out.glob("*.html"):  # notebooks link to ../docs/<page>.md: the rendered copies
        page.write_text(_DOC_LINK.sub(lambda m: f'href="docs/{m.group(1)}.html{m.group(2) or ""}"',
                                      page.read_text()))
    index = out / "index.html"
    index.write_text(_INDEX.format(findings=findings(), cards="\n".join(cards)))
    return index


_HEADING = re.compile(r"<h([1-6])>(.*?)</h\1>")


def _with_id(m: re.Match) -> str:
    """GitHub's heading anchors (lower case, punctuation dropped, spaces to dashes), so links
    such as ``papers.md#simo-headline-numbers`` land on the same heading in the site."""
    text = re.sub(r"<[^>]+>", "", html.unescape(m.group(2)))
    slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
    return f'<h{m.group(1)} id="{slug}">{m.group(2)}</h{m.group(1)}>'


_DOC_LINK = re.compile(r'href="\.\./docs/([\w-]+)\.md(#[^"]*)?"')
_MD_LINK = re.compile(r'href="([\w-]+)\.md(#[^"]*)?"')


def _docs(out: Path) -> None:
    """``docs/*.md`` rendered to ``<out>/docs/*.html``, links between them kept working."""
    import mistune

    (out / "docs").mkdir(exist_ok=True)
    if (paths.ROOT / "docs" / "img").is_dir():
        shutil.copytree(paths.ROOT / "docs" / "img", out / "docs" / "img")
    render = mistune.create_markdown(escape=False, plugins=["table"])
    for md in sorted((paths.ROOT / "docs").glob("*.md")):
        body = _MD_LINK.sub(lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"',
                            _HEADING.sub(_with_id, render(md.read_text())))
        (out / "docs" / f"{md.stem}.html").write_text(_PAGE.format(title=md.stem, body=body))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>simo-study · {title}</title>
<style>body {{ font-family: system-ui, sans-serif; max-width: 900px; margin: 2em auto;
padding: 0 1em; line-height: 1.45; }} img {{ max-width: 100%; }} table {{ border-collapse:
collapse; }} td, th {{ border: 1px solid #ddd; padding: 2px 6px; }}</style></head><body>
<p><a href="../index.html">simo-study</a></p>
{body}
</body></html>
"""


_INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>simo-study</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }}
h1 {{ margin-bottom: 0.2em; }} section {{ border-top: 1px solid #ddd; padding: 0.6em 0; }}
.thumbs img {{ height: 150px; margin: 4px; border: 1px solid #eee; }}
code {{ background: #f4f4f4; padding: 0 3px; }}
</style></head><body>
<h1>simo-study</h1>
<p>Merging single-task finetuned ViT encoders into one multi-task model, realigning it, and
previewing weighted multi-task finetuning: every figure below is regenerated by the notebooks.</p>
<h2>What the study found</h2>
{findings}
<p>In full: <a href="docs/findings.html">every finding with its numbers</a> ·
<a href="docs/papers.html">the two papers</a> · <a href="docs/design.html">the design</a> ·
<a href="docs/solutions.html">exercise solutions</a> · <a href="docs/running.html">running the
study</a> · <a href="docs/gallery.html">every figure</a></p>
<h2>The notebooks</h2>
{cards}
</body></html>
"""


# ------------------------------------------------------------------------------- browser check

_PROBE = ("<script>window.addEventListener('load', () => {const im = [...document.images];"
          "document.body.setAttribute('data-simo-images', im.filter(i => i.complete && "
          "i.naturalWidth > 0).length + '/' + im.length);});</script>")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--hide-scrollbars")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    raise ConfigError("no Chromium found: install it (Debian: apt-get install chromium) to check "
                      "the site")


def check(site: Path | None = None, shots: Path | None = None,
          timeout: float = 60.0) -> dict[str, tuple[int, int]]:
    """Open every page of the site in headless Chromium: {page: (images rendered, images)}, and a
    screenshot per page in ``shots`` (default ``<site>/screenshots``)."""
    site = site or paths.BUILD / "site"
    shots = shots or site / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    exe, result = chromium(), {}
    with tempfile.TemporaryDirectory() as tmp:
        probe_dir = Path(tmp) / "site"
        shutil.copytree(site, probe_dir, ignore=shutil.ignore_patterns("screenshots"))
        for page in sorted(probe_dir.rglob("*.html")):  # index, notebook pages, docs pages
            name = page.relative_to(probe_dir).as_posix()
            page.write_text(page.read_text().replace("</body>", _PROBE + "</body>", 1))
            base = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile",
                    "--virtual-time-budget=15000"]
            dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True,
                                 text=True, timeout=timeout).stdout
            m = re.search(r'data-simo-images="(\d+)/(\d+)"', dom)
            result[name] = (int(m.group(1)), int(m.group(2))) if m else (0, -1)
            shot = shots / name.replace("/", "-").replace(".html", ".png")
            subprocess.run([*base, "--window-size=1280,1600", f"--screenshot={shot}",
                            (site / name).as_uri()], capture_output=True, timeout=timeout)
    return result
