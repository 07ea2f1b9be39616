#!/usr/bin/env python3
"""How long a newcomer's `make book` takes: measured on a fresh clone, written into the README.

    python3 scripts/book_time.py measure      # clone HEAD into a temporary folder, run `make book` there
                                               # (first install included, an empty model cache), then record
    python3 scripts/book_time.py record LOG --wall-s S --commit SHA
                                               # record a run made the same way by hand (its `make book` log)
    python3 scripts/book_time.py readme       # rewrite the README's measured-time line from the JSON

`measure` and `record` write bench/results/book_time.json (the wall time, the install's share, each
notebook's seconds from `atoms run --all`'s table, the machine) and then run `readme`, which replaces
the text between the README's `<!-- book-time -->` markers. Nothing in the README's time is typed by hand.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "book_time.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- book-time -->", "<!-- /book-time -->"
ROW = re.compile(r"^(\d\d_\w+(?:\[[^\]\s]*\])?)\s+(ok|skipped|failed|missing)\s+([\d.]+|-)\s", re.M)
BUDGET_MIN = 30.0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def parse_log(text: str) -> dict:
    """The per-notebook rows of `atoms run --all`'s summary table, and whether the site was built."""
    rows = [{"notebook": m[1], "status": m[2], "seconds": None if m[3] == "-" else float(m[3])}
            for m in ROW.finditer(text)]
    if not rows:
        raise SystemExit("no `atoms run --all` summary table in the log: did `make book` get that far?")
    return {"notebooks": rows, "site_built": "the book is at" in text,
            "all_ok": all(r["status"] in ("ok", "skipped") for r in rows)}


def record(log_text: str, wall_s: float, commit: str, how: str) -> dict:
    parsed = parse_log(log_text)
    nb_s = sum(r["seconds"] or 0.0 for r in parsed["notebooks"])
    result = {"benchmark": "book_time", "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "commit": commit, "how": how, "wall_s": wall_s, "notebooks_s": nb_s,
              "install_and_site_s": wall_s - nb_s, "budget_min": BUDGET_MIN,
              "within_budget": wall_s <= BUDGET_MIN * 60 and parsed["all_ok"] and parsed["site_built"],
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                          "load_average_end": os.getloadavg()},
              **parsed}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, OUT)
    readme()
    return result


def readme() -> None:
    o = json.loads(OUT.read_text())
    slow = sorted((r for r in o["notebooks"] if r["seconds"]), key=lambda r: -r["seconds"])[:3]
    text = (f"Measured on {o['date'][:10]} ({o['machine']['cores']} cores, {o['machine']['cpu']}, commit "
            f"{o['commit'][:10]}): **`make book` took {o['wall_s'] / 60:.1f} minutes** on a fresh clone, "
            f"first install included ({o['install_and_site_s'] / 60:.1f} min of install and site build; slowest "
            f"notebooks: " + ", ".join(f"{r['notebook']} {r['seconds'] / 60:.1f} min" for r in slow) + "). "
            + ("That is within" if o["within_budget"] else "That is **over**")
            + f" the {o['budget_min']:g}-minute budget. (`python3 scripts/book_time.py measure` measures it again "
            f"and rewrites this line.)")
    s = README.read_text()
    if BEGIN not in s or END not in s:
        raise SystemExit(f"{README} has no {BEGIN} ... {END} markers; put them where the time belongs")
    head, rest = s.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    print(text)


def measure(keep: str | None) -> dict:
    commit = subprocess.check_output(["git", "-C", str(ROOT), "rev-parse", "HEAD"], text=True).strip()
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="atoms-book-time-"))
    clone = work / "clone"
    subprocess.check_call(["git", "clone", "-q", str(ROOT), str(clone)])
    env = {**os.environ, "ATOMS_CACHE": str(work / "models")}   # no model conversion carried over
    env.pop("ATOMS_CACHE_DIR", None)
    print(f"make book in {clone} (commit {commit[:10]}); log: {work / 'make-book.log'}", flush=True)
    t0 = time.monotonic()
    with open(work / "make-book.log", "w") as log:
        rc = subprocess.call(["make", "book"], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.monotonic() - t0
    text = (work / "make-book.log").read_text()
    if rc != 0:
        print(text[-3000:], file=sys.stderr)
        raise SystemExit(f"make book failed (exit {rc}) after {wall / 60:.1f} min; nothing recorded")
    return record(text, wall, commit, "scripts/book_time.py measure: git clone, make book, empty model cache")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="fresh clone of HEAD, make book, record")
    m.add_argument("--keep", help="work folder to keep (default: a new temporary one)")
    r = sub.add_parser("record", help="record a fresh-clone make book run made by hand")
    r.add_argument("log")
    r.add_argument("--wall-s", type=float, required=True)
    r.add_argument("--commit", required=True)
    sub.add_parser("readme", help="rewrite the README's line from bench/results/book_time.json")
    a = ap.parse_args(argv)
    if a.cmd == "measure":
        measure(a.keep)
    elif a.cmd == "record":
        record(Path(a.log).read_text(errors="replace"), a.wall_s, a.commit,
               "by hand: git clone, make book with an empty model cache ($ATOMS_CACHE)")
    else:
        readme()


if __name__ == "__main__":
    main()
