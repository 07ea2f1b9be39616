"""Health before verdicts: is a trained SAE fit to draw a conclusion from?

A number measured on a collapsed SAE is not evidence. On Gemma 3 270M the field's standard recipe and
ours once ended with 81-99.9% of the units dead and a faithfulness carried by five massive coordinates,
and the book still drew verdicts from them. :func:`sae_health` reads four facts of one trained SAE on
held-out activations and judges them against a :class:`HealthBar`:

- the share of units never active on the held-out tokens;
- its L0 against its target (SAEs trained towards a target L0);
- its R² without the massive coordinates (:mod:`atomslib.activation_stats`) against its R²: a
  reconstruction that gets a few massive coordinates right must not look faithful;
- whether its training loss was still falling at the end of the full-learning-rate phase
  (``fit_info["loss_trend"]``, written by :func:`atomslib.train.train_tsae`).

A claim measured on an SAE that fails the bar gets the verdict "inconclusive (unhealthy training)"
(``atomslib.book.results.INCONCLUSIVE``), with the reasons, never supported or not supported.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from ._util import fmt


@dataclass(frozen=True)
class HealthBar:
    """What an SAE must meet before a verdict is drawn from it."""

    max_dead_share: float = 0.10
    """Largest share of units never active on the held-out tokens. The trainer's own goal is 5%
    (bench/health.py); past 10% a dictionary is measured on a fraction of itself."""
    l0_target_tolerance: float = 0.20
    """Largest relative distance |L0 − T| / T of the held-out mean L0 from the target T (SAEs trained
    with a target L0 only): an SAE far from its target is compared at a sparsity nobody chose."""
    max_massive_gap: float = 0.25
    """Largest R² (euclid) minus R² without the massive coordinates: above it, a few coordinates carry
    the faithfulness (the old Gemma 3 layer-2 atoms: 0.75 against 0.03)."""
    max_loss_trend: float = 0.5
    """Largest relative fall of the training loss between the last two tenths of the full-lr steps
    (``fit_info["loss_trend"]``): above it the loss was still falling fast, and the SAE is unfinished."""

    def __post_init__(self) -> None:
        for name, v in asdict(self).items():
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
                raise ValueError(f"HealthBar.{name}={v!r}: must be a finite number >= 0")


HEALTH_BAR = HealthBar()


class Health(NamedTuple):
    """One SAE's health on held-out activations (``_asdict()`` is what a claim carries)."""

    healthy: bool
    reasons: list
    """Why it fails the bar, one phrase each (empty when healthy)."""
    dead_share: float | None
    l0: float | None
    l0_target: float | None
    r2: float | None
    r2_without_massive: float | None
    n_massive: int | None
    loss_trend: float | None
    l0_train: float | None = None
    """Mean L0 over the last stretch of training (``fit_info["l0"]``): beside the held-out L0 it tells a
    trainer that missed its target from codes that fire more on unseen tokens than on the training ones."""


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def failed_checks(dead: float | None, l0: float | None, target: float | None, r2: float | None,
                  r2_without_massive: float | None, trend: float | None, *, bar: HealthBar = HEALTH_BAR) -> list[str]:
    """Which of the bar's checks fail, by name: "dead", "l0" (off its target), "massive", "falling". A value
    that is None is not checked. The one place the bar is applied (sae_health's reasons, health_label)."""
    out = []
    if dead is not None and dead > bar.max_dead_share:
        out.append("dead")
    if target is not None and l0 is not None and abs(l0 - target) > bar.l0_target_tolerance * target:
        out.append("l0")
    if r2 is not None and r2_without_massive is not None and r2 - r2_without_massive > bar.max_massive_gap:
        out.append("massive")
    if trend is not None and trend > bar.max_loss_trend:
        out.append("falling")
    return out


def health_label(h: Mapping[str, Any] | None, *, bar: HealthBar = HEALTH_BAR) -> str | None:
    """A health record (`Health._asdict()`, as the results files keep it) in a few words for a table cell:
    "ok", or what fails: "dead 12%", the held-out L0 with the training one in brackets "66.2 (61.6)",
    "massive", "falling". None for no record."""
    if not isinstance(h, Mapping):
        return None
    if h["healthy"]:
        return "ok"
    words = {"dead": lambda: f"dead {h['dead_share']:.0%}", "massive": lambda: "massive", "falling": lambda: "falling",
             "l0": lambda: fmt(h["l0"]) + ("" if h.get("l0_train") is None else f" ({fmt(h['l0_train'])})")}
    failed = failed_checks(h["dead_share"], h["l0"], h["l0_target"], h["r2"], h["r2_without_massive"],
                           h["loss_trend"], bar=bar)
    return ", ".join(words[k]() for k in failed) or "; ".join(h["reasons"])


def sae_health(units: Any, metrics: Mapping[str, Any], *, bar: HealthBar = HEALTH_BAR) -> Health:
    """The health of trained `units` (a :class:`atomslib.tsae.TSAE`) from its held-out `metrics`
    (:func:`atomslib.criteria.unit_metrics` or ``unit_store.core_criteria``: dead_fraction, mean_l0,
    r2_euclid, r2_without_massive, n_massive) against `bar`."""
    if not isinstance(bar, HealthBar):
        raise TypeError(f"bar must be an atomslib.health.HealthBar, got {type(bar).__name__}")
    cfg = getattr(units, "cfg", None)
    target = _num(cfg.target_l0) if cfg is not None and getattr(cfg, "sparsity_form", None) == "target" else None
    fit = dict(getattr(units, "fit_info", {}) or {})
    dead, l0 = _num(metrics.get("dead_fraction")), _num(metrics.get("mean_l0"))
    r2, r2_wo = _num(metrics.get("r2_euclid")), _num(metrics.get("r2_without_massive"))
    trend, l0_train = _num(fit.get("loss_trend")), _num(fit.get("l0"))
    failed = failed_checks(dead, l0, target, r2, r2_wo, trend, bar=bar)
    reasons = []
    if "dead" in failed:
        reasons.append(f"{dead:.1%} of units never active on held-out tokens (bar {bar.max_dead_share:.0%})")
    if "l0" in failed:
        why = ""
        if l0_train is not None:
            met = abs(l0_train - target) <= bar.l0_target_tolerance * target
            why = (f"; {l0_train:.3g} on its training tokens" + (": the codes fire more on unseen tokens than on the "
                                                                  "training ones" if met else ""))
        reasons.append(f"L0 {l0:.3g} held out against a target of {target:.3g} (bar ±{bar.l0_target_tolerance:.0%}"
                       f"{why})")
    if "massive" in failed:
        reasons.append(f"R² {r2:.3g} but {r2_wo:.3g} without the {metrics.get('n_massive')} massive coordinates "
                       f"(bar: a gap of {bar.max_massive_gap:.3g})")
    if "falling" in failed:
        reasons.append(f"training loss still falling ({trend:.0%} over the last tenth at full lr; bar "
                       f"{bar.max_loss_trend:.0%}): train longer")
    n_massive = metrics.get("n_massive")
    return Health(not reasons, reasons, dead, l0, target, r2, r2_wo, None if n_massive is None else int(n_massive),
                  trend, l0_train)


def loss_trend(history: list[Mapping[str, Any]], meta: Mapping[str, Any]) -> float | None:
    """Relative fall of the training loss over the last stretch at full learning rate (a training log's
    records and run facts, atomslib.train.TrainLog): mean loss of the records in the fourth-last tenth of
    the steps minus that of the tenth before the final decay, over the latter (what the health bar reads
    as "still falling"); None with too few records."""
    total = meta.get("total_steps") or (history[-1]["step"] if history else 0)
    if not history or not total:
        return None
    end = meta.get("decay_start") or total
    a = [r["loss"] for r in history if end - 0.2 * total < r["step"] <= end - 0.1 * total]
    b = [r["loss"] for r in history if end - 0.1 * total < r["step"] <= end]
    if not a or not b:
        return None
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    return (ma - mb) / mb if mb > 0 else None
