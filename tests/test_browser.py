"""atomslib.book.browser, chapter 5's atom browser.

Fast: the HTML builder on tiny synthetic cards (escaping, shading, one card per unit, nothing
remote), `unit_cards` on a stand-in cache, and the library never importing `atomslib.book`.
Headless Chromium (as in test_book: required unless ATOMS_SKIP_BROWSER=1): a synthetic page renders offline and its select boxes
switch units. `book`-marked (minutes): chapter 5 on the quick profile shows the browser with shaded
tokens for every kind, and its standalone copy works in Chromium.
"""
from __future__ import annotations

import ast
import html
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from atomslib import interpret as it
from atomslib.book import browser

REPO = Path(__file__).resolve().parents[1]
KINDS = ("neurons", "features", "atoms")


class Tags(html.parser.HTMLParser):
    """Every start tag as (tag, attrs dict), and each token span with its text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.tokens, self._open = [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "span" and self._in_t:
            self._open = {"attrs": a, "text": ""}
        if tag == "span" and "ab-t" in (a.get("class") or "").split():
            self._in_t = True

    _in_t = False

    def handle_data(self, data):
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.tokens.append(self._open)
            self._open = None
        elif tag == "span" and self._in_t:
            self._in_t = False


def _alpha(style: str | None) -> tuple[tuple[int, int, int], float] | None:
    m = re.fullmatch(r"background:rgba\((\d+),(\d+),(\d+),([0-9.]+)\)", style or "")
    return ((int(m[1]), int(m[2]), int(m[3])), float(m[4])) if m else None


def _card(kind="atoms", layer=3, unit=0, tokens=("a", "b", "c"), acts=(0.0, 2.0, 1.0), focus=1, values=None, **kw):
    values = np.array([0.0, 2.0, 1.0, 0.5]) if values is None else values
    return browser.UnitCard(kind, layer, unit, [browser.Window(list(tokens), list(acts), focus, 4)], values, **kw)


def test_token_text_is_escaped():
    evil = ['<script>alert("x")</script>', '" onmouseover="alert(1)', "<img src=x onerror=alert(1)>", "&amp;", "\n"]
    card = _card(kind="<b>kind</b>", tokens=evil, acts=[1.0, 0.5, None, 0.0, 0.2], focus=0,
                 stats={"<i>stat</i>": 1.5, "note": "<u>x</u>"})
    out = browser.build_html([card], note="<em>note</em>")
    assert out.count("<script>") == 1 and "alert(" not in out.split("<script>")[1]   # only the browser's own script
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in out
    assert "<img" not in out and "&lt;img src=x onerror=alert(1)&gt;" in out
    assert "&amp;amp;" in out and "<b>" not in out and "<i>" not in out and "<u>" not in out and "<em>" not in out
    tags = Tags(out)
    assert not [a for _, a in tags.tags if any(k.startswith("on") for k in a)], "an event-handler attribute got in"
    assert [t["text"] for t in tags.tokens] == [t if t != "\n" else "⏎" for t in evil]   # the text reads as written


def test_shading_is_proportional_to_activation():
    acts = [0.0, 4.0, 1.0, -2.0, None, 3.0, 0.01]
    card = _card(tokens=list("abcdefg"), acts=acts, values=np.array([4.0, -1.0, 0.0, 2.0]))
    tokens = Tags(browser.build_html([card])).tokens
    assert len(tokens) == len(acts)
    for tok, a in zip(tokens, acts):
        shaded = _alpha(tok["attrs"].get("style"))
        if a is None:
            assert shaded is None and "ab-x" in tok["attrs"]["class"]
        elif round(abs(a) / 4.0, 2) == 0:
            assert shaded is None, f"activation {a} should be unshaded"
        else:
            colour, alpha = shaded
            assert alpha == pytest.approx(abs(a) / 4.0, abs=0.005), f"activation {a}: opacity {alpha}"
            assert colour == (browser.POSITIVE if a > 0 else browser.NEGATIVE)
            assert float(tok["attrs"]["title"]) == pytest.approx(a, rel=1e-3)
    assert "ab-f" in tokens[1]["attrs"]["class"]    # the focus token is marked
    # an explicit scale: the unit's largest held-out |activation|, clipped at full opacity
    tokens = Tags(browser.build_html([_card(acts=[0.0, 2.0, 1.0], scale=8.0)])).tokens
    assert [_alpha(t["attrs"].get("style")) for t in tokens][1:] == [(browser.POSITIVE, 0.25), (browser.POSITIVE, 0.12)]
    assert browser.shade(9.0, 8.0) == 1.0 and browser.shade(None, 1.0) == 0.0 and browser.shade(1.0, 0.0) == 0.0


def test_one_card_per_unit_with_histogram_stats_and_controls():
    cards = [_card(kind=k, layer=L, unit=u, stats={"firing frequency": 0.25, "token entropy (bits)": 1.0})
             for L in (3, 15) for k in KINDS for u in (5, 9)]
    out = browser.build_html(cards, dom_id="ab")
    tags = Tags(out).tags
    found = [(a["data-kind"], int(a["data-layer"]), int(a["data-unit"])) for t, a in tags
             if t == "div" and "ab-card" in (a.get("class") or "")]
    assert found == [(c.kind, c.layer, c.unit) for c in cards]
    ids = [a["id"] for t, a in tags if "id" in a]
    assert len(ids) == len(set(ids)) == len(cards) + 1 and ids[0] == "ab"
    assert out.count("<svg") == len(cards) and out.count("token entropy (bits)") == len(cards)
    selects = {a["data-ab"]: a for t, a in tags if t == "select"}
    assert set(selects) == {"layer", "kind", "unit"}
    options = [a["value"] for t, a in tags if t == "option"]
    assert options == ["3", "15", *KINDS]     # units are filled in by the script, per layer and kind
    with pytest.raises(ValueError, match="one card"):
        browser.build_html(cards + cards[:1])


def test_histogram_counts_active_values_only():
    svg = browser.histogram_svg(np.array([0.0] * 50 + [1.0, 1.0, 2.0]), bins=4)
    assert svg.count("<rect") == 2 and "histogram of 3 active" in svg
    assert ": 2</title>" in svg and ": 1</title>" in svg
    signed = browser.histogram_svg(np.array([-1.0, -0.5, 1.0]), bins=4)
    assert f"rgb{browser.NEGATIVE}".replace(" ", "") in signed and f"rgb{browser.POSITIVE}".replace(" ", "") in signed
    assert "never active" in browser.histogram_svg(np.zeros(5))


def test_nothing_is_fetched_from_elsewhere():
    card = _card(tokens=["see ", "https://example.org", " <a href='http://x'>"], acts=[0.0, 1.0, 0.5])
    out = browser.build_html([card])
    page = browser.standalone_page(out, "t")
    for text in (out, page):
        refs = [v for _, a in Tags(text).tags for k, v in a.items() if k in ("src", "href", "srcset", "action", "data")]
        assert refs == [], f"the browser references {refs}"
        assert "<link" not in text and "@import" not in text and "url(" not in text
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page


def test_window_and_card_checks():
    with pytest.raises(ValueError, match="one activation per token"):
        browser.Window(["a", "b"], [1.0], 0)
    with pytest.raises(ValueError, match="focus"):
        browser.Window(["a"], [1.0], 1)
    assert _card(values=np.array([0.0, -3.0]), acts=(0.0, 1.0, 0.5)).full_scale() == 3.0


class FakeCache:
    """The part of ActivationCache that unit_cards uses: 2 contexts of 6 tokens, position 0 of each
    (the sink) and one outlier not stored, so 9 rows."""

    ctx_len = 6

    def __init__(self):
        self.token_ids = torch.arange(12, dtype=torch.int32).reshape(2, 6)
        self.doc_ids = torch.tensor([[0] * 6, [1] * 6], dtype=torch.int32)
        stored = [(c, p) for c in range(2) for p in range(1, 6) if (c, p) != (1, 3)]
        self._ctx = torch.tensor([c for c, _ in stored])
        self._pos = torch.tensor([p for _, p in stored])

    def n_kept(self, layer):
        return len(self._ctx)

    def locate(self, layer, rows):
        rows = torch.as_tensor(rows, dtype=torch.int64).reshape(-1)
        return self._ctx[rows], self._pos[rows]

    def contexts(self, layer, rows, *, before=12, after=4, tokenizer=None):
        from atomslib.cache import Context

        out = []
        for r in torch.as_tensor(rows).reshape(-1).tolist():
            c, p = int(self._ctx[r]), int(self._pos[r])
            lo, hi = max(0, p - before), min(self.ctx_len, p + after + 1)
            out.append(Context(r, c, p, int(self.doc_ids[c, p]), [f"<t{int(i)}>" for i in self.token_ids[c, lo:hi]], p - lo))
        return out


def test_unit_cards_read_window_activations_from_the_unit_columns():
    cache = FakeCache()
    n = cache.n_kept(0)
    X = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    W = torch.tensor([[1.0, 0.0, -1.0], [0.5, 1.0, 0.0], [0.0, -1.0, 2.0]])
    enc = lambda x: torch.relu(x @ W)  # noqa: E731
    top = it.topk_activations([X[:4], X[4:]], enc, k=3)
    acts = it.unit_activations([X[:4], X[4:]], enc, [2, 0])
    assert torch.allclose(acts, enc(X)[:, [2, 0]])
    table = browser.row_table(cache, 0)
    assert table.tolist() == [[-1, 0, 1, 2, 3, 4], [-1, 5, 6, -1, 7, 8]]
    cards = browser.unit_cards(cache, 0, "features", top, [2, 0], acts, {2: {"token entropy (bits)": 0.5}},
                               n_contexts=2, before=2, after=1)
    assert [c.unit for c in cards] == [2, 0] and cards[0].stats["token entropy (bits)"] == 0.5
    assert cards[0].stats["firing frequency"] == pytest.approx(float(top.frequency[2]))
    for i, card in enumerate(cards):
        assert len(card.windows) == min(2, int(top.valid[card.unit].sum()))
        assert card.scale == pytest.approx(float(top.max_abs[card.unit]))
        for w, r in zip(card.windows, top.rows[card.unit].tolist()):
            c, p = cache.locate(0, [r])
            assert w.acts[w.focus] == pytest.approx(float(acts[r, i]))
            lo = int(p) - w.focus
            for j, a in enumerate(w.acts):
                row = int(table[int(c), lo + j])
                assert (a is None) == (row < 0) and (a is None or a == pytest.approx(float(acts[row, i])))
    with pytest.raises(ValueError, match="acts must be"):
        browser.unit_cards(cache, 0, "features", top, [2], acts)


def test_the_library_does_not_import_the_book_helpers():
    lib = REPO / "atomslib"
    bad = []
    for p in sorted(lib.rglob("*.py")):
        if (lib / "book") in p.parents:
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                names = [mod] if node.level == 0 else [("." * node.level) + mod]
                names += [f"{names[0]}.{a.name}" for a in node.names]
            if any(re.fullmatch(r"(atomslib|\.)\.?book(\..*)?", n) for n in names):
                bad.append(f"{p.relative_to(REPO)}:{node.lineno}")
    assert not bad, f"the library imports atomslib.book: {bad}"


# ---- headless Chromium --------------------------------------------------------------------------

# Added to a copy of the page: after load, record which cards are visible, switch kind, layer and
# unit through the select boxes (as a reader would), and leave the record in a <meta> tag.
PROBE = """<script>window.addEventListener("load",function(){var R=document.querySelector(".atom-browser"),out={};
function sel(n){return R.querySelector('select[data-ab="'+n+'"]');}
function vis(){return [].filter.call(R.querySelectorAll(".ab-card"),function(c){return c.offsetParent!==null;}).map(function(c){
 var sh=[].filter.call(c.querySelectorAll(".ab-t span"),function(s){var b=getComputedStyle(s).backgroundColor;return b&&b!=="rgba(0, 0, 0, 0)"&&b!=="transparent";});
 return {id:c.id,kind:c.getAttribute("data-kind"),layer:c.getAttribute("data-layer"),shaded:sh.length};});}
function set(n,v){var s=sel(n);s.value=v;s.dispatchEvent(new Event("change"));}
out.bar=R.querySelector(".ab-bar").offsetParent!==null;out.initial=vis();out.kinds={};
[].forEach.call(sel("layer").options,function(l){set("layer",l.value);[].forEach.call(sel("kind").options,function(k){
 set("kind",k.value);out.kinds[l.value+"/"+k.value]={units:sel("unit").options.length,visible:vis()};});});
set("layer",sel("layer").options[0].value);set("kind",sel("kind").options[0].value);
if(sel("unit").options.length>1){sel("unit").selectedIndex=1;sel("unit").dispatchEvent(new Event("change"));out.second=vis();}
R.querySelector('[data-ab="next"]').click();out.next=vis();
var m=document.createElement("meta");m.name="ab-probe";m.content=JSON.stringify(out);document.head.appendChild(m);});</script>"""


def _chromium():
    sys.path.insert(0, str(REPO / "scripts"))
    import check_site

    if os.environ.get("ATOMS_SKIP_BROWSER") == "1":
        pytest.skip("ATOMS_SKIP_BROWSER=1: the browser check was skipped on purpose")
    chrome = check_site.find_chromium()
    if chrome is None:   # as in test_book: `make test` installs it (scripts/ensure-chromium.sh)
        pytest.fail("no headless Chromium: apt-get install chromium, or set ATOMS_SKIP_BROWSER=1 to skip on purpose")
    return chrome, check_site.CHROMIUM_FLAGS


def probe_in_chromium(page: Path, extra: str = "") -> tuple[dict, list[str]]:
    """Open a copy of `page` (file://, all hosts unresolvable) with PROBE (and `extra`) added: its
    record, and every URL the page requested that is not a file:// one."""
    chrome, flags = _chromium()
    with tempfile.TemporaryDirectory() as d:
        copy = Path(d) / "page.html"
        copy.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + extra + "</body>", 1), encoding="utf-8")
        netlog = Path(d) / "net.json"
        r = subprocess.run([chrome, *flags, f"--user-data-dir={Path(d) / 'profile'}", "--virtual-time-budget=5000",
                            "--window-size=1200,900", f"--log-net-log={netlog}", "--dump-dom", copy.as_uri()],
                           capture_output=True, text=True, timeout=120)
        m = re.search(r'<meta name="ab-probe" content="([^"]*)"', r.stdout)
        assert m, f"the probe did not run (exit {r.returncode}): {r.stderr[-500:]}"
        try:
            log = json.loads(netlog.read_text())
            start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
            # the page's own requests (a file:// page's origin is "null"), not the browser's background traffic
            urls = [e["params"]["url"] for e in log["events"] if e.get("type") == start and "url" in e.get("params", {})
                    and e["params"].get("initiator") != "not an origin"]
        except (OSError, ValueError, KeyError):
            urls = []
    return json.loads(html.unescape(m.group(1))), [u for u in urls if not u.startswith(("file:", "data:"))]


def check_probe(rec: dict, kinds=KINDS) -> None:
    """One card visible at a time, a shaded one for every kind (at some layer), switching works."""
    assert rec["bar"], "the controls were not shown (the script did not run)"
    assert len(rec["initial"]) == 1, f"initially visible: {rec['initial']}"
    shaded = {k: False for k in kinds}
    for where, got in rec["kinds"].items():
        layer, kind = where.split("/")
        assert len(got["visible"]) == (1 if got["units"] else 0), f"{where}: visible {got['visible']}"
        for v in got["visible"]:
            assert (v["layer"], v["kind"]) == (layer, kind), f"{where} shows {v}"
            shaded[kind] |= v["shaded"] > 0
    assert all(shaded.values()), f"kinds without a shaded token: {[k for k, s in shaded.items() if not s]}"
    if "second" in rec:
        assert len(rec["second"]) == 1 and rec["second"][0]["id"] != rec["initial"][0]["id"], "the unit select did nothing"
    assert len(rec["next"]) == 1


def test_synthetic_page_renders_and_switches_in_chromium(tmp_path):
    cards = [_card(kind=k, layer=L, unit=u, tokens=["<b>x</b>", " y", "\n"], acts=[0.0, 1.0 + u, 0.5])
             for L in (0, 1) for k in KINDS for u in range(3)]
    page = tmp_path / "browser.html"
    page.write_text(browser.standalone_page(browser.build_html(cards)), encoding="utf-8")
    rec, remote = probe_in_chromium(page)
    check_probe(rec)
    assert rec["kinds"]["1/atoms"]["visible"][0]["id"].startswith("atom-browser-atoms-1-")
    assert remote == [], f"the page requested {remote}"
    # the check sees a remote resource when there is one
    _, remote = probe_in_chromium(page, extra='<img src="http://example.org/x.png" alt="">')
    assert remote == ["http://example.org/x.png"]


# ---- chapter 5 on the quick profile ---------------------------------------------------------------

@pytest.fixture(scope="module")
def chapter5(tmp_path_factory):
    """`atoms run 05_what_atoms_look_like --profile quick` in a copy of the sources (its own caches)."""
    root = tmp_path_factory.mktemp("ch5")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(REPO / "data" / "profiles", root / "data" / "profiles")
    out = root / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "atomslib.cli", "run", "05_what_atoms_look_like", "--profile", "quick",
                        "--root", str(root), "--out", str(out)], capture_output=True, text=True, env=env, timeout=1800)
    assert r.returncode == 0, f"chapter 5 failed on the quick profile:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return out


@pytest.mark.book
def test_chapter5_shows_the_browser_with_shaded_tokens_of_every_kind(chapter5):
    nb = json.loads((chapter5 / "05_what_atoms_look_like.ipynb").read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code" and any(
        'class="atom-browser"' in "".join(o.get("data", {}).get("text/html", "")) for o in c.get("outputs", []))]
    assert len(cells) == 1, f"{len(cells)} cells show the browser"
    assert "remove-input" in cells[0]["metadata"].get("tags", [])
    block = "".join(next(o["data"]["text/html"] for o in cells[0]["outputs"] if "text/html" in o.get("data", {})))
    cards, shaded = {}, {k: 0 for k in KINDS}
    for part in block.split('<div class="ab-card" ')[1:]:
        kind = re.search(r'data-kind="([^"]+)"', part)[1]
        cards[kind] = cards.get(kind, 0) + 1
        shaded[kind] += len(re.findall(r'style="background:rgba\(', part)) > 0
    assert set(cards) == set(KINDS) and all(shaded.values()), f"cards {cards}, with shaded tokens {shaded}"
    page = chapter5 / "figures" / "05_what_atoms_look_like_browser.html"
    assert page.is_file() and page.stat().st_size < 2_000_000, f"{page}: {page.stat().st_size if page.exists() else 'missing'}"
    res = json.loads((chapter5 / "results" / "05_what_atoms_look_like.json").read_text())
    assert res["metrics"]["browser"]["units"] == sum(cards.values())


@pytest.mark.book
def test_chapter5_standalone_browser_works_offline_in_chromium(chapter5):
    rec, remote = probe_in_chromium(chapter5 / "figures" / "05_what_atoms_look_like_browser.html")
    check_probe(rec)
    assert remote == [], f"the page requested {remote}"
