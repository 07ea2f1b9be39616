#!/usr/bin/env python3
"""Check a built Jupyter Book in headless Chromium: math typeset, images load, nothing fetched off-site.

    python scripts/check_site.py _build/book-default/_build/html --screenshots /tmp/shots

Serves HTML_DIR on 127.0.0.1 (a free port, Python's http.server), and for every page:
  * dumps the DOM after scripts ran (`chromium --headless --dump-dom`); a page whose HTML holds
    math must contain `<mjx-container` (MathJax rendered it, from the site's own files);
  * requests every <img> of the DOM and expects HTTP 200 (data: URIs count as loaded);
  * checks that relative links point to files that exist;
  * reads Chromium's network log: a request the *page* made to anything but the local server is an
    off-site fetch (the browser's own background traffic is not counted);
  * measures the layout in the browser (a small script the server adds to every page it serves):
    a table, figure or image wider than the article column, with no horizontally scrolling box
    around it, is a problem (a reader would find it cut off at the right edge); and a table or
    image may scroll inside itself (its scrollWidth above its width) but its box must not stick
    out of its container (the nearest block around it) unless a box in between scrolls;
  * flags a squeezed table column: a cell narrower than SQUEEZED_CHARS characters of its own font
    in which text wraps onto a second line (the browser shrank the column until its text stood one
    word per line, as a long unbreakable code name in the next column does; a <br> does not count,
    nor the verdict matrix's small health notes, `.v-health`, which wrap by design under the number);
  * scans each page's outputs for stray reprs (`stray_outputs`: `PosixPath(...)`, `<Figure size ...>`,
    `<Axes: ...>`, `<... object at 0x...>`: a cell that ended in a value nobody meant to show), and
    the tables the book's display helper makes (`table.atoms-table`) for numbers that break the
    book's format (`unformatted_numbers`: more than 3 significant digits, 1.2e+07, 12345 without
    its thousands separator);
  * takes a full-page screenshot into --screenshots, if given (the window as tall as the page).
Exit status 0 when every page passes; 1 with one line per problem otherwise; 2 when Chromium is
missing. `--report FILE` writes the per-page details as JSON.
"""
from __future__ import annotations

import argparse
import functools
import html
import html.parser
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

SQUEEZED_CHARS = 12   # a table column narrower than this many characters, with text that wraps, is squeezed
SKIP_PAGES = {"genindex.html", "search.html", "py-modindex.html", "index.html"}  # index.html: a redirect
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                  # anything but the local server fails fast instead of waiting on DNS
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]


def find_chromium(explicit: str | None = None) -> str | None:
    for name in ([explicit] if explicit else []) + ["chromium", "chromium-browser", "google-chrome", "chrome"]:
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


# Runs in the page after load: finds content wider than the article column that no scrolling box
# holds, and the page's height (for the full-page screenshot); leaves both in <meta> tags, which
# --dump-dom shows. Added by the test server only: the built site is not changed.
_PROBE = """<script>(function(){function run(){
var art=document.querySelector('article.bd-article')||document.querySelector('main')||document.body;
var right=art.getBoundingClientRect().right+1,bad=[];
function name(el){return el.tagName.toLowerCase()+(el.id?'#'+el.id:'')+(el.className&&typeof el.className==='string'?'.'+el.className.trim().split(/\\s+/)[0]:'');}
document.querySelectorAll('article table, article img, article figure, article svg, article pre').forEach(function(el){
 if(el.closest('.MathJax, mjx-container'))return;
 var r=el.getBoundingClientRect(); if(r.width===0)return;
 if(r.right>right){var held=false;
  for(var a=el.parentElement;a&&a!==art;a=a.parentElement){var ox=getComputedStyle(a).overflowX;
   if((ox==='auto'||ox==='scroll')&&a.getBoundingClientRect().right<=right){held=true;break;}}
  if(!held){bad.push(name(el)+' '+Math.round(r.right-right)+'px');return;}}
 if(el.tagName!=='TABLE'&&el.tagName!=='IMG')return;
 // a table or image may scroll inside itself (scrollWidth > its width), but its box stays inside its
 // container: the nearest block ancestor, unless a box between them scrolls
 for(var c=el.parentElement;c&&c!==art.parentElement;c=c.parentElement){var cs=getComputedStyle(c);
  if(cs.overflowX==='auto'||cs.overflowX==='scroll')return;
  if(cs.display==='contents'||cs.display.indexOf('inline')===0)continue;
  var cr=c.getBoundingClientRect(); if(cr.width===0)continue;
  if(r.right>cr.right+1)bad.push(name(el)+' '+Math.round(r.right-cr.right)+'px wider than its container '+name(c));
  return;}});
// squeezed columns: a cell narrower than SQUEEZED characters of its font in which a piece of text
// wraps onto a second line (a text node laid out over several line boxes; a <br> the page meant is not one)
var squeezed=[],seen={},cv=document.createElement('canvas').getContext('2d'),rg=document.createRange(),WRAPS_OK='.v-health';
function wraps(c){var w=document.createTreeWalker(c,NodeFilter.SHOW_TEXT),n;
 while((n=w.nextNode())){if(!n.textContent.trim()||(n.parentElement&&n.parentElement.closest(WRAPS_OK)))continue;
  rg.selectNodeContents(n);var tops={},k=0;
  Array.prototype.forEach.call(rg.getClientRects(),function(q){var t=Math.round(q.top);if(q.width>0&&!tops[t]){tops[t]=1;k++;}});
  if(k>1)return true;}return false;}
document.querySelectorAll('article table').forEach(function(t,ti){
 if(t.closest('.MathJax, mjx-container'))return;
 t.querySelectorAll('td, th').forEach(function(c){
  var cs=getComputedStyle(c),text=(c.innerText||'').replace(/\\s+/g,' ').trim(); if(!text)return;
  var avail=c.clientWidth-parseFloat(cs.paddingLeft)-parseFloat(cs.paddingRight); if(avail<=0)return;
  cv.font=cs.font; var ch=cv.measureText('0').width; if(!ch)return;
  if(avail/ch>=SQUEEZED||!wraps(c))return;
  var key=ti+':'+c.cellIndex; if(seen[key])return; seen[key]=1;
  squeezed.push(name(t)+' #'+(ti+1)+' column '+(c.cellIndex+1)+' is '+(avail/ch).toFixed(1)+' characters wide for "'+text.slice(0,40)+'"');});});
function meta(n,v){var m=document.createElement('meta');m.name=n;m.content=v;document.head.appendChild(m);}
meta('atoms-overflow',JSON.stringify(bad));meta('atoms-squeezed',JSON.stringify(squeezed));meta('atoms-height',String(document.documentElement.scrollHeight));}
if(document.readyState==='complete'){setTimeout(run,500);}else{window.addEventListener('load',function(){setTimeout(run,500);});}})();</script>"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    log = None  # list of (path, status), set per server

    def log_message(self, *args):  # no stderr noise
        pass

    def send_head(self):
        path = self.translate_path(self.path)
        if not path.endswith(".html") or not os.path.isfile(path):
            return super().send_head()
        import io
        body = Path(path).read_bytes()
        body = body.replace(b"</body>", _PROBE.replace("SQUEEZED", str(SQUEEZED_CHARS)).encode() + b"</body>", 1)
        self.send_response(200)
        self.send_header("Content-type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)

    def log_request(self, code="-", size="-"):
        if self.log is not None:
            self.log.append((self.path, int(code) if str(code).isdigit() else code))


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # Chromium closes connections it no longer needs (e.g. at the screenshot): not a site problem.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def serve(root: Path):
    """Start a threaded static server on 127.0.0.1:<free port>; returns (server, base_url, request log)."""
    log: list = []
    handler = type("Handler", (_Quiet,), {"log": log})
    server = _QuietServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", log


class _Refs(html.parser.HTMLParser):
    """Collect <img src>, <a href> and tags that load resources."""

    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.resources = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.imgs.append(a["src"])
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag == "script" and a.get("src"):
            self.resources.append(a["src"])
        elif tag == "link" and a.get("href") and {"stylesheet", "preload", "icon"} & set((a.get("rel") or "").split()):
            self.resources.append(a["href"])


def _chromium(chrome: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([chrome, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


def _page_requests(netlog: Path, origin: str) -> list[str]:
    """URLs the page itself requested (initiator = the page's origin), from a Chromium net log."""
    try:
        d = json.loads(netlog.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    start = d["constants"]["logEventTypes"].get("URL_REQUEST_START_JOB")
    return [e["params"]["url"] for e in d.get("events", [])
            if e.get("type") == start and e.get("params", {}).get("initiator") == origin]


# What a cell shows when it ends in a value nobody meant to display: a path, a figure or axes object,
# any object's default repr.
STRAY_PATTERNS = (r"\b(?:Posix|Windows)?Path\('", r"<Figure size \d", r"<Axes(?:Subplot)?[:\s>]",
                  r"<matplotlib\.[\w.]+ (?:object )?at 0x", r"<[\w.]+ object at 0x[0-9a-f]+>",
                  r"<pandas\.io\.formats\.style\.Styler", r"<IPython\.core\.display\.\w+ object")


class _Outputs(html.parser.HTMLParser):
    """The text of a Jupyter Book page's cell outputs (`div.cell_output`), and the cells of the tables
    the book's display helper made (`table.atoms-table`)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.depth, self.in_output, self.in_table, self.in_td = 0, [], None, False
        self.text: list[str] = []
        self.cells: list[str] = []

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if tag == "div":
            self.depth += 1
            if "cell_output" in classes:
                self.in_output.append(self.depth)
        elif tag == "table" and "atoms-table" in classes:
            self.in_table = True
        elif tag == "td" and self.in_table:
            self.in_td = True
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag == "div":
            if self.in_output and self.in_output[-1] == self.depth:
                self.in_output.pop()
            self.depth -= 1
        elif tag == "table":
            self.in_table = False
        elif tag == "td":
            self.in_td = False

    def handle_data(self, data):
        if self.in_output:
            self.text.append(data)
        if self.in_td:
            self.cells[-1] += data


def stray_outputs(page_html: str) -> list[str]:
    """Stray reprs in the outputs of a built page (`PosixPath('...')`, `<Figure size 640x480 with 1 Axes>`...)."""
    parser = _Outputs()
    parser.feed(page_html)
    text = "\n".join(parser.text)
    found = []
    for pattern in STRAY_PATTERNS:
        for m in re.finditer(pattern, text):
            line = text[m.start():].split("\n", 1)[0]
            found.append(line[:80])
    return found


_PLAIN_NUMBER = r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"


def unformatted_numbers(page_html: str) -> list[str]:
    """Numbers in the cells of the display helper's tables (`table.atoms-table`) that the book's format
    would not write: more than 3 significant digits (0.2748), an exponent on a number ≥ 0.0001
    (1.587e+07), an integer from 1,000 on without its thousands separator (12345)."""
    parser = _Outputs()
    parser.feed(page_html)
    bad = []
    for cell in parser.cells:
        t = cell.strip()
        if not re.fullmatch(_PLAIN_NUMBER, t):
            continue
        mantissa, _, exp = t.lower().lstrip("-").partition("e")
        value = float(t)
        significant = len(mantissa.replace(".", "").lstrip("0"))
        if (exp and 1e-4 <= abs(value) < 1e15) or ("." in mantissa and significant > 3) \
                or (not exp and "." not in mantissa and abs(value) >= 1000):
            bad.append(t)
    return bad


def check_page(chrome: str, base: str, root: Path, rel: str, shots: Path | None, budget_ms: int, timeout: float) -> dict:
    url = f"{base}/{rel}"
    raw = (root / rel).read_text(errors="replace")
    out = {"page": rel, "problems": []}
    with tempfile.TemporaryDirectory() as d:
        netlog = Path(d) / "net.json"
        r = _chromium(chrome, [f"--virtual-time-budget={budget_ms}", f"--log-net-log={netlog}", "--dump-dom", url], timeout)
        dom = r.stdout
        requests = _page_requests(netlog, base)
    if not dom.strip():
        out["problems"].append(f"{rel}: Chromium returned no DOM (exit {r.returncode}): {r.stderr.strip()[-300:]}")
        return out
    math_expected = 'class="math' in raw
    out.update(math_expected=math_expected, mjx=dom.count("<mjx-container"))
    if math_expected and not out["mjx"]:
        out["problems"].append(f"{rel}: has math but the DOM holds no <mjx-container> (MathJax did not render)")
    refs = _Refs()
    refs.feed(dom)
    out["images"] = len(refs.imgs)
    for src in refs.imgs:
        if src.startswith("data:"):
            continue
        full = urllib.parse.urljoin(url, src)
        if not full.startswith(base):
            out["problems"].append(f"{rel}: image {src} is off-site")
            continue
        try:
            status = urllib.request.urlopen(full, timeout=10).status
        except urllib.error.HTTPError as e:
            status = e.code
        if status != 200:
            out["problems"].append(f"{rel}: image {src} answered HTTP {status}")
    for href in refs.links:
        parsed = urllib.parse.urlparse(href)
        if parsed.scheme or parsed.netloc or not parsed.path:
            continue  # external links are fine to *link*; anchors need no file
        target = (root / rel).parent / urllib.parse.unquote(parsed.path)
        if not target.exists():
            out["problems"].append(f"{rel}: broken link {href}")
    for src in refs.resources:
        if urllib.parse.urljoin(url, src).split(":", 1)[0] in ("http", "https") and not urllib.parse.urljoin(url, src).startswith(base):
            out["problems"].append(f"{rel}: loads an off-site resource {src}")
    over = re.search(r'<meta name="atoms-overflow" content="([^"]*)"', dom)
    height = re.search(r'<meta name="atoms-height" content="(\d+)"', dom)
    if over is None:
        out["problems"].append(f"{rel}: the layout probe did not run (no atoms-overflow meta in the DOM)")
    else:
        wide = json.loads(html.unescape(over.group(1)))
        out["too_wide"] = wide
        out["problems"] += [f"{rel}: wider than its column and not scrollable: {w}" for w in wide]
    squeezed = re.search(r'<meta name="atoms-squeezed" content="([^"]*)"', dom)
    out["squeezed"] = json.loads(html.unescape(squeezed.group(1))) if squeezed else []
    out["problems"] += [f"{rel}: squeezed table column: {w}" for w in out["squeezed"]]
    out["problems"] += [f"{rel}: stray output {s!r} (a cell ends in a value nobody meant to show)" for s in stray_outputs(raw)]
    out["problems"] += [f"{rel}: a table of the book's display helper shows {n!r}, not in the book's number format "
                        f"(atomslib._util.fmt)" for n in unformatted_numbers(raw)]
    out["height"] = int(height.group(1)) if height else 1400
    off_site = sorted({u for u in requests if not u.startswith(base)})
    out["off_site_requests"] = off_site
    out["problems"] += [f"{rel}: the page requested {u}" for u in off_site]
    if shots is not None:
        shot = shots / (rel.replace("/", "__").removesuffix(".html") + ".png")
        tall = min(max(out["height"], 900), 16000)   # the whole page, within what Chromium renders
        r = _chromium(chrome, [f"--virtual-time-budget={budget_ms}", f"--window-size=1280,{tall}",
                               f"--screenshot={shot}", url], timeout)
        if shot.exists():
            out["screenshot"] = str(shot)
        else:
            out["problems"].append(f"{rel}: no screenshot (exit {r.returncode}): {r.stderr.strip()[-200:]}")
    return out


def check_site(html_dir: str | os.PathLike, *, screenshots: str | os.PathLike | None = None, chromium: str | None = None,
               pages: list[str] | None = None, budget_ms: int = 8000, timeout: float = 90.0) -> dict:
    """Check every page (or `pages`, paths relative to html_dir); returns {"pages": [...], "problems": [...]}."""
    root = Path(html_dir).resolve()
    if not (root / "index.html").exists() and not pages:
        raise FileNotFoundError(f"{root} holds no index.html: pass the built site's html folder (…/_build/html)")
    chrome = find_chromium(chromium)
    if chrome is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium); the site check needs a headless browser")
    rels = pages or sorted(p.relative_to(root).as_posix() for p in root.rglob("*.html")
                           if not p.relative_to(root).parts[0].startswith("_") and p.name not in SKIP_PAGES)
    shots = Path(screenshots) if screenshots else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
    server, base, log = serve(root)
    try:
        results = [check_page(chrome, base, root, rel, shots, budget_ms, timeout) for rel in rels]
    finally:
        server.shutdown()
    problems = [p for r in results for p in r["problems"]]
    # any local asset that answered an error (a missing stylesheet, script, font...), favicon aside
    problems += sorted({f"the site answered HTTP {code} for {path}" for path, code in log
                        if isinstance(code, int) and code >= 400 and not path.startswith("/favicon.ico")})
    return {"pages": results, "problems": problems, "chromium": chrome}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html_dir", help="the built site: …/_build/html")
    ap.add_argument("--screenshots", help="folder for one PNG per page")
    ap.add_argument("--report", help="write the per-page details as JSON here")
    ap.add_argument("--chromium", help="Chromium executable (default: found on PATH)")
    ap.add_argument("--page", action="append", help="check only this page (relative path; repeatable)")
    args = ap.parse_args(argv)
    try:
        rep = check_site(args.html_dir, screenshots=args.screenshots, chromium=args.chromium, pages=args.page)
    except FileNotFoundError as e:
        print(f"check_site: {e}", file=sys.stderr)
        return 2
    if args.report:
        Path(args.report).write_text(json.dumps(rep, indent=2))
    for r in rep["pages"]:
        mark = "FAIL" if r["problems"] else "ok  "
        print(f"{mark} {r['page']}: math {r.get('mjx', 0)} rendered, {r.get('images', 0)} images")
    for p in rep["problems"]:
        print(f"problem: {p}", file=sys.stderr)
    print(f"{len(rep['pages'])} pages, {len(rep['problems'])} problems")
    return 1 if rep["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
