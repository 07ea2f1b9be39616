"""The book end to end: `atoms run --all --profile quick`, nbval, Jupyter Book, headless Chromium.

Everything runs in a temporary copy of the book's sources, so the working tree is never touched.
Whatever notebooks exist are run; planned chapters without a source get placeholder pages, so
adding a notebook needs no change here. The browser test needs Chromium: `make test` installs it
(scripts/ensure-chromium.sh); without it the test fails, unless ATOMS_SKIP_BROWSER=1 opts out.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from atomslib.book.results import PAPER_CLAIMS, evaluate_claims, fmt, load_model_results, validate_results

pytestmark = pytest.mark.book

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_UPDATE_DOWNLOAD_COUNTS": "0", "WANDB_MODE": "disabled",
           "PYTHONUNBUFFERED": "1"}

# Runs jupyter-book with an audit hook that records every network lookup or connection that is
# not to this machine: the build must make none.
BUILD_WITH_AUDIT = r"""
import sys
log = sys.argv.pop(1)
LOCAL = ("127.0.0.1", "localhost", "::1", "0.0.0.0", None)
def hook(event, args):
    host = None
    if event == "socket.connect" and isinstance(args[1], tuple):
        host = args[1][0]
    elif event in ("socket.getaddrinfo", "socket.gethostbyname"):
        host = args[0]
    else:
        return
    if host not in LOCAL:
        with open(log, "a") as f:
            f.write(f"{event} {host!r}\n")
sys.addaudithook(hook)
from jupyter_book.cli.main import main
sys.argv = ["jupyter-book"] + sys.argv[1:]
main()
"""


def _copy_sources(dst: Path) -> None:
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(REPO / name, dst / name)
    shutil.copytree(REPO / "_static", dst / "_static")   # the site's CSS (wide tables scroll): measured in Chromium
    shutil.copytree(REPO / "book", dst / "book", ignore=shutil.ignore_patterns("generated", "__pycache__"))
    shutil.copytree(REPO / "notebooks", dst / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(REPO / "data" / "profiles", dst / "data" / "profiles")
    if (REPO / "bench" / "results").is_dir():
        shutil.copytree(REPO / "bench" / "results", dst / "bench" / "results")


def _toc_files(root: Path) -> list[str]:
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(x):
        if isinstance(x, dict):
            if "file" in x:
                files.append(x["file"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(toc.get("parts", toc.get("chapters", [])))
    return files


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """Run every notebook on the quick profile and build the site, in a copy of the sources."""
    root = tmp_path_factory.mktemp("book")
    _copy_sources(root)
    env = {**os.environ, **OFFLINE}
    r = subprocess.run([sys.executable, "-m", "atomslib.cli", "run", "--all", "--profile", "quick", "--root", str(root)],
                       capture_output=True, text=True, env=env, timeout=1200)
    assert r.returncode == 0, f"atoms run --all --profile quick failed:\n{r.stdout}\n{r.stderr[-6000:]}"
    audit = root / "network.log"
    out = root / "_site"
    b = subprocess.run([sys.executable, "-c", BUILD_WITH_AUDIT, str(audit), "build", str(root), "--path-output", str(out)],
                       capture_output=True, text=True, env=env, timeout=1200)
    log = b.stdout + b.stderr
    assert b.returncode == 0 and "build succeeded" in log, f"jupyter-book build failed:\n{log[-6000:]}"
    return {"root": root, "html": out / "_build" / "html", "log": log, "audit": audit, "run_out": r.stdout + r.stderr}


def _executed(root: Path) -> dict[str, dict]:
    """name -> executed notebook JSON, real notebooks only (no placeholders)."""
    gen = root / "book" / "generated"
    nbs = {p.stem: json.loads(p.read_text()) for p in sorted(gen.glob("[0-9][0-9]_*.ipynb")) if not p.stem.endswith(".partial")}
    return {k: v for k, v in nbs.items() if not v["metadata"].get("atoms", {}).get("placeholder")}


def test_every_toc_chapter_has_an_html_page(book):
    missing = [f for f in _toc_files(book["root"]) if not (book["html"] / f"{f}.html").is_file()]
    assert not missing, f"toc entries without an HTML page: {missing}"
    sources = {p.stem for p in (book["root"] / "notebooks").glob("[0-9][0-9]_*.md")}
    assert sources <= set(_executed(book["root"])), "a notebook source was not executed"


def test_build_makes_no_network_attempt_and_no_warnings_on_our_pages(book):
    attempts = book["audit"].read_text() if book["audit"].exists() else ""
    assert not attempts, f"the book build tried to reach the network:\n{attempts}"
    ours = [ln for ln in book["log"].splitlines() if ("WARNING" in ln or "ERROR" in ln)
            and re.search(r"(book/(?!_ext)|_toc\.yml|_config\.yml)", ln) and "atomslib" not in ln]
    assert not ours, "the build warned about the book's own pages:\n" + "\n".join(ours)


def test_pages_show_no_python_warnings(book):
    """A reader should not meet library noise (e.g. tqdm's "IProgress not found") on a chapter."""
    noisy = []
    for name, nb in _executed(book["root"]).items():
        for i, cell in enumerate(nb["cells"]):
            for out in cell.get("outputs", []):
                text = "".join(out.get("text", "")) if out.get("name") == "stderr" else ""
                if re.search(r"\w+Warning:", text):
                    noisy.append(f"{name} cell {i}: {text.strip()[:300]}")
    assert not noisy, "warnings printed on the pages:\n" + "\n".join(noisy)


def test_results_follow_the_convention_and_carry_the_run_key(book):
    gen = book["root"] / "book" / "generated"
    for name, nb in _executed(book["root"]).items():
        path = gen / "results" / f"{name}.json"
        assert path.is_file(), f"{name} wrote no results file {path}"
        res = json.loads(path.read_text())
        assert validate_results(res, name) == [], f"{path}: {validate_results(res, name)}"
        assert res["run_key"] == nb["metadata"]["atoms"]["run_key"], f"{name}: results and notebook keys differ"
        assert res["params"].get("profile") == "quick", f"{name}: ran with profile {res['params'].get('profile')}"


def test_numbers_on_the_pages_equal_the_results_files(book):
    """Every claim value appears, formatted by fmt, as a table cell on its chapter and on the conclusions."""
    gen = book["root"] / "book" / "generated"
    conclusions = (book["html"] / "book" / "generated" / "06_conclusions.html").read_text()
    checked = 0
    for path in sorted((gen / "results").glob("*.json")):
        res = json.loads(path.read_text())
        page = (book["html"] / "book" / "generated" / f"{path.stem}.html").read_text()
        for c in res["claims"]:
            cell = f">{fmt(c['value'])}<"
            assert cell in page, f"{path.stem}: claim {c['claim_id']} = {c['value']} is not shown as {cell} on its page"
            assert cell in conclusions, f"claim {c['claim_id']} of {path.stem} = {fmt(c['value'])} is not on the conclusions page"
            checked += 1
    assert checked > 0, "no claim values were found in any results file"
    for c in PAPER_CLAIMS:  # every claim has a row, measured or not
        assert f">{c.claim_id}<" in conclusions, f"claim {c.claim_id} missing from the conclusions page"


def test_executed_notebooks_reproduce_under_nbval(book, tmp_path):
    """Re-execute the executed notebooks (nbval) in a copy and compare outputs, sanitised."""
    copy = tmp_path / "nbval"
    shutil.copytree(book["root"], copy, ignore=shutil.ignore_patterns("_site", "network.log"))
    # the other models' pages run the same code; nbval executes a notebook in its own folder, and
    # their path parameters are relative to book/generated/, where the runner executed them
    names = sorted(n for n in _executed(copy) if "/" not in n)
    files = [str(copy / "book" / "generated" / f"{n}.ipynb") for n in names]
    r = subprocess.run([sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env", "-q", "-p", "no:cacheprovider",
                        "--nbval-sanitize-with", str(REPO / "tests" / "nbval_sanitize.cfg"), "--rootdir", str(copy),
                        "-o", "addopts=", *files], capture_output=True, text=True, cwd=copy,
                       env={**os.environ, **OFFLINE}, timeout=1200)
    if r.returncode != 0:
        # nbval names the notebook and the cell ("... 06_conclusions.ipynb::Cell 4"); keep those lines first
        where = "\n".join(ln for ln in r.stdout.splitlines() if "::Cell" in ln or "mismatch" in ln.lower())
        pytest.fail(f"nbval: re-executing the notebooks changed their outputs:\n{where}\n\n{r.stdout[-8000:]}")


def test_site_renders_math_and_images_in_chromium(book):
    sys.path.insert(0, str(REPO / "scripts"))
    import check_site

    if os.environ.get("ATOMS_SKIP_BROWSER") == "1":
        pytest.skip("ATOMS_SKIP_BROWSER=1: the browser check was skipped on purpose")
    if check_site.find_chromium() is None:
        pytest.fail("no headless Chromium: `make test` installs Debian's chromium (as root, through apt); "
                    "otherwise apt-get install chromium, or set ATOMS_SKIP_BROWSER=1 to skip this check on purpose")
    shots = Path(os.environ.get("ATOMS_SCREENSHOTS") or book["root"] / "screenshots")
    report = check_site.check_site(book["html"], screenshots=shots)
    assert not report["problems"], "site problems:\n" + "\n".join(report["problems"])
    pages = {p["page"]: p for p in report["pages"]}
    for page in ("book/theory.html", "book/generated/01_theory.html"):
        assert pages[page]["mjx"] > 0, f"{page}: math was not rendered"
    assert pages["book/generated/01_theory.html"]["images"] >= 3, "01_theory should show its figures"
    assert all("screenshot" in p for p in report["pages"]), "a page has no screenshot"
    assert all(p.get("too_wide") == [] for p in report["pages"]), "the layout probe did not run on every page"
    assert any(p.get("height", 0) > 1400 for p in report["pages"]), "screenshots should cover whole pages"
    print(f"screenshots in {shots}")


def test_pages_show_no_stray_reprs_and_their_tables_keep_the_number_format(book):
    """Issue 32: no cell ends in a value nobody meant to show (a PosixPath under a figure), and the tables of
    the display helper write every number by fmt (scripts/check_site.py's scanners, without a browser)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import check_site

    pages = sorted(p for p in book["html"].rglob("*.html") if "_static" not in p.parts)
    stray = [f"{p.relative_to(book['html'])}: {s}" for p in pages for s in check_site.stray_outputs(p.read_text())]
    assert not stray, "stray outputs on the pages:\n" + "\n".join(stray)
    off = [f"{p.relative_to(book['html'])}: {n}" for p in pages for n in check_site.unformatted_numbers(p.read_text())]
    assert not off, "numbers outside the book's format in the display helper's tables:\n" + "\n".join(off[:20])
    assert any('class="dataframe atoms-table"' in p.read_text() for p in pages), "no page shows a table of the helper"


def test_the_intro_opens_with_the_findings_of_the_results_files(book):
    """Findings at a glance (issues 12, 32): the intro opens with the verdict matrix, a cell per claim, model
    and layer holding the headline number as the results files give it, with the R²–q* figure; the
    conclusions page lists every headline verdict claim by claim, with links to the chapters behind them."""
    import html as html_lib

    from atomslib.book.findings import verdict_words
    from atomslib.book.verdicts import verdict_matrix

    gen = book["root"] / "book" / "generated"
    results = {k: v for k, v in load_model_results(gen / "results").items() if k.split("@")[0] != "06_conclusions"}
    rows = evaluate_claims(results)
    raw = (book["html"] / "book" / "intro.html").read_text()
    assert '<table class="atoms-verdicts">' in raw, "the intro shows no verdict matrix"
    columns, cells = verdict_matrix(rows)
    assert len(cells) >= 5, f"too few measured cells to check: {cells}"
    missing = [k for k, c in cells.items() if f'data-verdict="{html_lib.escape(c.verdict)}"' not in raw
               or f'<span class="v-number">{html_lib.escape(c.number)}</span>' not in raw]
    assert not missing, f"verdict matrix cells missing from the intro page: {missing[:5]}"
    assert "06_conclusions_r2_q.png" in raw, "the intro shows no R²–q* figure"
    intro = html_lib.unescape(re.sub(r"<[^>]+>", "", raw))
    assert "gemma3-270m" in intro and "smollm2-135m" in intro, "the intro's verdicts do not name both models"
    conclusions_raw = (book["html"] / "book" / "generated" / "06_conclusions.html").read_text()
    conclusions = html_lib.unescape(re.sub(r"<[^>]+>", "", conclusions_raw))
    words = verdict_words(rows)
    absent = [w for w in words if w[0] not in conclusions or w[1] not in conclusions]
    assert not absent, f"findings missing from the conclusions page: {absent[:5]}"
    assert 'href="03_neurons_features_atoms.html' in conclusions_raw, "the conclusions do not link their verdicts' chapters"
    # the figure is embedded in the page (papermill's output), so look for its caption and an image beside it
    assert "each model's number against its relative depth" in conclusions, "the conclusions show no figure across families"
    section = conclusions_raw[conclusions_raw.index('id="across-families"'):conclusions_raw.rindex("against its relative depth")]
    assert "<img" in section, "the across-families section has no image"
