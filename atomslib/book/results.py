"""The results-JSON convention: the paper's claims, the book's number format, results files.

Every notebook ends by writing `results/NN_name.json` through `save_results`:

`notebook` (name), `title`, `params` (every parameter value the notebook ran with),
`atomslib_version`, `run_key` (filled in by `atoms run`; `null` when run by hand), `created`
(UTC ISO time), `metrics` (free-form JSON numbers behind the page's tables and figures), `claims`
(a list of `{"claim_id", "value", "variant", "split", ...}`; `claim_id` from `PAPER_CLAIMS`,
`value` a number or `null`, `variant` the metric variant, e.g. `"R2=euclid, q*=A"`, `split`
`"train"`, `"heldout"` or `"synthetic"`; optional `model`, `layer`, `note`), `figures`
(paths relative to the results folder's parent), `environment` (python, torch, platform, and the `device` the
notebook ran on with its `device_name`: the GPU's or the processor's). Every claim value must appear on the
notebook's page formatted by `fmt` (use `claims_table`): the book test checks it.

Notebooks use them as `from atomslib.book import results`.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from .._util import atomic_write_json, device_name, fmt  # fmt: the one number format, defined in the library (the book's pages use results.fmt)
from .project import MODELS_DIR

# ----------------------------------------------------------------------------------------------
# The paper's claims: the shared vocabulary of results files and the rule each verdict follows.


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, the reference value (the paper's) and the verdict rule."""
    claim_id: str
    statement: str       # what the paper claims, in words
    paper: str           # the paper's own number or wording (reference only, never our result)
    chapter: str         # the notebook expected to measure it
    lo: float = -math.inf  # supported iff lo <= value <= hi
    hi: float = math.inf
    unit: str = ""

    @property
    def rule(self) -> str:
        if self.lo == -math.inf:
            return f"value ≤ {self.hi:g}{self.unit}"
        if self.hi == math.inf:
            return f"value ≥ {self.lo:g}{self.unit}"
        return f"{self.lo:g} ≤ value ≤ {self.hi:g}{self.unit}"

    def verdict(self, value: float | None, health: Mapping[str, Any] | None = None) -> str:
        """The verdict by the rule; INCONCLUSIVE when `health` (the SAE behind the value, see
        `atomslib.health.sae_health`) failed its bar: a number from a collapsed SAE is not evidence."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "not measured"
        if health is not None and not health.get("healthy", True):
            return INCONCLUSIVE
        return "supported" if self.lo <= value <= self.hi else "not supported"


# The verdict of a claim measured on an SAE that failed the health bar (atomslib.health.HealthBar).
INCONCLUSIVE = "inconclusive (unhealthy training)"
VERDICTS = ("supported", "not supported", INCONCLUSIVE, "not measured")


_T, _S, _U, _C = "01_theory", "02_representation_shift", "03_neurons_features_atoms", "04_capacity_scale"
_I = "08_identification"
PAPER_CLAIMS: tuple[Claim, ...] = (
    Claim("theorem.rip", "δ_K ≤ (K−1)μ: no sampled restricted-isometry constant exceeds the coherence bound "
          "(value: fraction of cases where it holds)", "theorem (proof)", _T, lo=1.0),
    Claim("theorem.uniqueness", "μ < 1/(2K−1) ⇒ every K-sparse code is unique (value: fraction of cases inside "
          "the bound where it is)", "theorem (proof)", _T, lo=1.0),
    Claim("theorem.l1_recovery", "inside the bound, basis pursuit recovers the code exactly (value: recovery rate)",
          "theorem (proof)", _T, lo=0.99),
    Claim("theorem.omp_recovery", "inside the bound, OMP recovers the code exactly (value: recovery rate)",
          "theorem (proof)", _T, lo=0.99),
    Claim("theorem.tsae_support", "with τ inside the TSAE interval the encoder recovers the support exactly "
          "(value: exact-support rate)", "theorem (proof)", _T, lo=0.99),
    Claim("identification.trained_tsae", "a TSAE trained on activations made of planted atoms finds them (value: the "
          "lowest share of true atoms that have a learned unit at cos > 0.95, over seeds and cells)",
          "theorem (proof) for an encoder built from the atoms; the experiments train TSAEs", _I, lo=0.95),
    Claim("shift.euclid_off_90", "Euclidean pairwise angles are not centred at 90° (value: |mean angle − 90°|)",
          "angles pulled well below 90°", _S, lo=5.0, unit="°"),
    Claim("shift.aip_at_90", "under the AIP the angles re-centre at 90° (value: |mean angle − 90°|, held out)",
          "centred at 90°", _S, hi=2.0, unit="°"),
    Claim("neurons.r2", "neurons are perfectly faithful (R²)", "100%", _U, lo=0.999),
    Claim("neurons.q_star", "neurons are not stable (q*)", "0.5%", _U, hi=0.05),
    Claim("features.r2", "SAE features are far from faithful (R²)", "48.8%", _U, hi=0.9),
    Claim("features.q_star", "SAE features are only partly stable (q*)", "68.2%", _U, lo=0.05, hi=0.95),
    Claim("atoms.r2", "atoms are faithful (R² ≈ 1)", "99.9%", _U, lo=0.99),
    Claim("atoms.q_star", "atoms are stable (q* ≈ 1)", "99.8%", _U, lo=0.95),
    Claim("capacity.r2_max", "with enough capacity atoms reach R² ≈ 1 (value: best held-out R² over capacities)",
          "≈ 1 past the critical capacity", _C, lo=0.99),
    Claim("capacity.critical_grows", "the critical capacity grows with data scale (value: 1 if it does, else 0)",
          "grows with |M|", _C, lo=1.0),
)
CLAIMS_BY_ID = {c.claim_id: c for c in PAPER_CLAIMS}


def claim(claim_id: str, value: float | None, variant: str, split: str, *, health: Mapping[str, Any] | None = None,
          **extra: Any) -> dict:
    """Build one claims entry, checked now so that a typo fails in the cell that made it.

    `health`: the health record of the SAE the value was measured on (`atomslib.health.Health._asdict()`,
    or any mapping with `healthy` and `reasons`); an unhealthy one makes the verdict `INCONCLUSIVE`."""
    if claim_id not in CLAIMS_BY_ID:
        raise ValueError(f"unknown claim_id {claim_id!r}; known: {', '.join(CLAIMS_BY_ID)} (atomslib.book.results.PAPER_CLAIMS)")
    if value is not None:
        if hasattr(value, "item"):  # numpy / torch scalars
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"claim {claim_id}: value must be a number or None, got {type(value).__name__}")
        value = float(value)
    for name, v in (("variant", variant), ("split", split)):
        if not isinstance(v, str) or not v:
            raise ValueError(f"claim {claim_id}: {name} must be a non-empty string (e.g. variant='R2=euclid', split='heldout')")
    if health is not None:
        if not isinstance(health, Mapping) or not isinstance(health.get("healthy"), bool) \
                or not isinstance(health.get("reasons"), (list, tuple)):
            raise ValueError(f"claim {claim_id}: health must be a mapping with 'healthy' (bool) and 'reasons' (a list), "
                             f"e.g. atomslib.health.sae_health(...)._asdict()")
        extra["health"] = json.loads(json.dumps(dict(health), default=_plain))
    return {"claim_id": claim_id, "value": value, "variant": variant, "split": split, **extra}


def _plain(v: Any) -> Any:
    """JSON for the numbers and tuples of a health record (numpy/torch scalars become numbers)."""
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, (tuple, set)):
        return list(v)
    raise TypeError(f"{type(v).__name__} is not JSON")


def validate_results(obj: Any, notebook: str | None = None) -> list[str]:
    """Problems with a results object under the convention (empty list: fine)."""
    if not isinstance(obj, dict):
        return [f"top level must be an object, got {type(obj).__name__}"]
    problems = [f"missing key {k!r}" for k in ("notebook", "params", "atomslib_version", "created", "metrics", "claims")
                if k not in obj]
    if notebook and obj.get("notebook") != notebook:
        problems.append(f"'notebook' is {obj.get('notebook')!r}, expected {notebook!r}")
    for k, typ in (("params", dict), ("metrics", dict), ("claims", list)):
        if k in obj and not isinstance(obj[k], typ):
            problems.append(f"{k!r} must be a {typ.__name__}")
    for i, c in enumerate(obj.get("claims") or []):
        try:
            claim(c["claim_id"], c["value"], c["variant"], c["split"], health=c.get("health"))
        except (KeyError, TypeError, ValueError) as e:
            problems.append(f"claims[{i}]: {e if not isinstance(e, KeyError) else f'missing key {e}'}")
    return problems


_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "open"}


def notebook_params(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a notebook runs with: call `notebook_params(globals())` in the cell right after
    the `parameters` cell (only the parameters and IPython's own names exist at that point)."""
    out = {}
    for k, v in namespace.items():
        if k.startswith("_") or k in _IPYTHON_NAMES:
            continue
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue  # modules, functions: not parameters
        out[k] = v
    return out


def save_results(notebook: str, params: Mapping[str, Any], metrics: Mapping[str, Any],
                 claims: Sequence[Mapping[str, Any]] = (), *, figures: Sequence[str] = (),
                 title: str | None = None, results_dir: str | os.PathLike | None = None) -> Path:
    """Write `<results_dir>/<notebook>.json` atomically under the convention; return its path."""
    import torch  # already imported by _util; recorded for provenance

    # The device the notebook ran on (a notebook without a `device` parameter runs on the CPU), named.
    device, device_label = device_name(params.get("device") or "cpu")
    obj = {"notebook": notebook, "title": title or notebook, "params": dict(params),
           "atomslib_version": __version__, "run_key": None,
           "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "metrics": dict(metrics), "claims": [dict(c) for c in claims], "figures": [str(f) for f in figures],
           "environment": {"python": platform.python_version(), "torch": torch.__version__,
                           "platform": platform.platform(), "processor": platform.machine(),
                           "device": device, "device_name": device_label}}
    problems = validate_results(obj, notebook)
    if problems:
        raise ValueError(f"results of {notebook} break the convention: " + "; ".join(problems))
    path = Path(results_dir if results_dir is not None else params.get("results_dir", "results")) / f"{notebook}.json"
    atomic_write_json(path, obj)
    return path


def load_results(results_dir: str | os.PathLike) -> dict[str, dict]:
    """Every `*.json` in `results_dir` (name -> object); unreadable files raise, naming the file."""
    out = {}
    for p in sorted(Path(results_dir).glob("*.json")):
        try:
            out[p.stem] = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"results file {p} is not valid JSON ({e}); rerun its notebook with --force") from e
    return out


def load_model_results(results_dir: str | os.PathLike) -> dict[str, dict]:
    """`load_results(results_dir)` plus the results of the runs on other models, which live in
    `<results_dir>/../models/<slug>/results/` (`atomslib.book.tasks.make_model_tasks`), named `NN_name@<slug>`."""
    out = load_results(results_dir)
    for folder in sorted((Path(results_dir).parent / MODELS_DIR).glob("*/results")):
        out.update({f"{name}@{folder.parent.name}": r for name, r in load_results(folder).items()})
    return out


def claims_table(claims: Sequence[Mapping[str, Any]]):
    """A table of claims entries, values formatted with `fmt` (show it on the page): a `tables.Table`,
    shown without pandas's row numbers and with every row."""
    import pandas as pd

    from .tables import Table

    rows = [{"claim": c["claim_id"], "value": fmt(c["value"]), "variant": c["variant"], "split": c["split"],
             **{k: fmt(v) for k, v in c.items() if k not in ("claim_id", "value", "variant", "split", "health")},
             **({"SAE health": health_words(c["health"])} if c.get("health") else {})}
            for c in claims]
    return Table(pd.DataFrame(rows).fillna(""))    # a field only some claims carry (e.g. note): blank elsewhere


def evaluate_claims(results: Mapping[str, Mapping]) -> list[dict]:
    """One row per claims entry found in `results` (plus 'not measured' rows for absent claims),
    with the paper's reference, our value, the variant and the verdict by the claim's rule."""
    rows = []
    for c in PAPER_CLAIMS:
        found = [(name, e) for name, r in results.items() for e in r.get("claims", []) if e.get("claim_id") == c.claim_id]
        if not found:
            reason = "not run yet" if c.chapter not in {k.split("@")[0] for k in results} else "not reported"
            rows.append({"claim_id": c.claim_id, "claim": c.statement, "paper (reference)": c.paper, "ours": "—",
                         "variant": "—", "split": "—", "where": f"{c.chapter} ({reason})",
                         "verdict": "not measured", "rule": c.rule, "value": None})
        for name, e in found:
            where = ", ".join(str(x) for x in (e.get("model"), e.get("layer") is not None and f"layer {e['layer']}") if x)
            health = e.get("health")
            rows.append({"claim_id": c.claim_id, "claim": c.statement, "paper (reference)": c.paper,
                         "ours": fmt(e.get("value")), "variant": e.get("variant", "—"), "split": e.get("split", "—"),
                         "where": where or name, "verdict": c.verdict(e.get("value"), health), "rule": c.rule,
                         "value": e.get("value"), "model": e.get("model"), "layer": e.get("layer"),
                         "health": health, "SAE health": health_words(health) if health else "—"})
    return rows


def health_words(health: Mapping[str, Any] | None) -> str:
    """One phrase for a health record: "healthy (dead 0.8%, ...)" or "unhealthy: <reasons>"."""
    if not health:
        return "—"
    if not health.get("healthy", True):
        return "unhealthy: " + "; ".join(map(str, health.get("reasons") or ["failed the health bar"]))
    facts = [f"{k} {fmt(health[v])}" for k, v in (("dead", "dead_share"), ("L0", "l0"),
                                                  ("R² w/o massive", "r2_without_massive")) if health.get(v) is not None]
    return "healthy" + (f" ({', '.join(facts)})" if facts else "")


def verdicts_by_model(rows: Sequence[Mapping]) -> dict[str, dict[str, str]]:
    """{claim_id: {model: verdict}} from `evaluate_claims` rows that name a model: "supported" or
    "not supported" when every conclusive measurement on that model (layers, variants) agrees, else
    "mixed (a of n supported)"; `INCONCLUSIVE` when none is conclusive (every SAE behind it failed
    the health bar), and ", k inconclusive" added when some are. Claims measured without a model
    (the theory chapters) are left out."""
    counts: dict[str, dict[str, list[int]]] = {}
    for r in rows:
        if r.get("model") is None or r["verdict"] == "not measured":
            continue
        n = counts.setdefault(r["claim_id"], {}).setdefault(str(r["model"]), [0, 0, 0])
        n[0] += r["verdict"] == "supported"
        n[1] += r["verdict"] in ("supported", "not supported")
        n[2] += r["verdict"] == INCONCLUSIVE

    def word(a: int, n: int, k: int) -> str:
        if n == 0:
            return INCONCLUSIVE
        w = "supported" if a == n else "not supported" if a == 0 else f"mixed ({a} of {n} supported)"
        return w + (f" ({k} inconclusive)" if k else "")

    return {cid: {m: word(*n) for m, n in per.items()} for cid, per in counts.items()}


def conclusion_summary(rows: Sequence[Mapping]) -> dict[str, list[dict]]:
    """Group `evaluate_claims` rows by verdict, then by claim: {'supported': [{'claim_id', 'statement',
    'measurements': ['0.995 (R2=euclid, heldout, smollm2-135m, layer 15)', ...]}], 'not supported': [...],
    INCONCLUSIVE: [...], 'not measured': [...]}. A claim measured under several variants may appear under
    several verdicts."""
    out: dict[str, list[dict]] = {v: [] for v in VERDICTS}
    for r in rows:
        group = out[r["verdict"]]
        entry = next((e for e in group if e["claim_id"] == r["claim_id"]), None)
        if entry is None:
            entry = {"claim_id": r["claim_id"], "statement": CLAIMS_BY_ID[r["claim_id"]].statement, "measurements": []}
            group.append(entry)
        if r["value"] is not None:
            why = f"; {r['SAE health']}" if r["verdict"] == INCONCLUSIVE else ""
            entry["measurements"].append(f"{r['ours']} ({r['variant']}, {r['split']}, {r['where']}{why})")
    return out


def paper_reference(claim_id: str) -> float | None:
    """The paper's own number for a claim of `PAPER_CLAIMS` as a fraction ("48.8%" -> 0.488), for
    plotting beside ours as a reference; None when the paper states it in words."""
    text = CLAIMS_BY_ID[claim_id].paper.strip()
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*%", text)
    return float(m.group(1)) / 100 if m else None
