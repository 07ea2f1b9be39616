"""Two model families side by side (the conclusions' "Across families"): per claim of the paper
measured on real models, each model's number against its relative layer depth (layer / number of
blocks), so that a reader sees at once whether a verdict depends on the family.

Each point is the headline measurement of a model and layer (the first metric variant a chapter
reported there, the number of the verdict matrix); a hollow marker is a number from an SAE that
failed the health bar (its verdict is inconclusive). The band is where the claim's rule calls the
number supported, the dashed line the paper's own number where it gives one (a reference).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from .results import PAPER_CLAIMS, paper_reference
from .verdicts import short_statement


def model_depths(models: Iterable[str]) -> dict[str, int | None]:
    """Number of blocks of each model, read from its config (no weights loaded; `atomslib.models.model_depth`);
    None for a model whose config cannot be read here (its points are left out, and the caption says so)."""
    from ..assets import ModelLoadError
    from ..models import model_depth

    out: dict[str, int | None] = {}
    for m in models:
        try:
            out[m] = model_depth(m)
        except (ModelLoadError, OSError, ValueError, TypeError):
            out[m] = None
    return out


def family_points(rows: Sequence[Mapping], depths: Mapping[str, int | None]) -> list[dict]:
    """One point per claim, model and layer: {claim_id, model, layer, depth (layer / blocks), value,
    verdict, healthy (False when the SAE behind it failed the health bar, else True)}; the headline
    measurement of each (the first the rows give). Rows without a model, a layer or a known depth are left out."""
    seen, out = set(), []
    for r in rows:
        model, layer = r.get("model"), r.get("layer")
        if model is None or layer is None or r.get("value") is None or r["verdict"] == "not measured":
            continue
        if (r["claim_id"], model, layer) in seen or not depths.get(model):
            continue
        seen.add((r["claim_id"], model, layer))
        health = r.get("health")
        out.append({"claim_id": r["claim_id"], "model": model, "layer": layer, "depth": layer / depths[model],
                    "value": r["value"], "verdict": r["verdict"], "healthy": not health or bool(health.get("healthy", True))})
    return out


def families_figure(points: Sequence[Mapping], *, ncols: int = 3):
    """A figure with one panel per claim that has points: value against relative depth, one colour
    per model, hollow markers for unhealthy SAEs, the rule's supported band shaded. None without points."""
    import matplotlib.pyplot as plt

    claims = [c for c in PAPER_CLAIMS if any(p["claim_id"] == c.claim_id for p in points)]
    if not claims:
        return None
    models = list(dict.fromkeys(p["model"] for p in points))
    ncols = min(ncols, len(claims))
    nrows = math.ceil(len(claims) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat[len(claims):]:
        ax.set_visible(False)
    for ax, c in zip(axes.flat, claims):
        mine = [p for p in points if p["claim_id"] == c.claim_id]
        values = [p["value"] for p in mine]
        lo_v, hi_v = min(values), max(values)
        pad = 0.1 * (hi_v - lo_v or abs(hi_v) or 1.0)
        ylim = (lo_v - pad, hi_v + pad)
        ax.axhspan(max(c.lo, ylim[0] - 10 * pad), min(c.hi, ylim[1] + 10 * pad), color="#cfe9d3", alpha=0.6, lw=0,
                   zorder=0)
        ref = paper_reference(c.claim_id)
        if ref is not None:
            ax.axhline(ref, color="0.4", ls="--", lw=1, zorder=1)
            ylim = (min(ylim[0], ref - pad), max(ylim[1], ref + pad))
        for i, m in enumerate(models):
            pts = sorted((p for p in mine if p["model"] == m), key=lambda p: p["depth"])
            if not pts:
                continue
            color = f"C{i}"
            ax.plot([p["depth"] for p in pts], [p["value"] for p in pts], color=color, lw=1, alpha=0.6, zorder=2)
            for healthy in (True, False):
                sel = [p for p in pts if p["healthy"] == healthy]
                if sel:
                    ax.scatter([p["depth"] for p in sel], [p["value"] for p in sel], s=42, zorder=3, linewidths=1.5,
                               facecolors=color if healthy else "none", edgecolors=color)
        ax.set_ylim(*ylim)
        ax.set_xlim(-0.03, 1.03)
        title = short_statement(c.claim_id)
        ax.set_title(title if len(title) <= 40 else title[:38] + "…", fontsize=9)
        ax.set_xlabel("layer / blocks", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=f"C{i}", marker="o", label=m) for i, m in enumerate(models)]
    handles += [Line2D([], [], color="0.3", marker="o", mfc="none", ls="none", label="SAE failed the health bar"),
                Line2D([], [], color="0.4", ls="--", label="paper (reference)"),
                plt.Rectangle((0, 0), 1, 1, color="#cfe9d3", label="supported by the rule")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0))
    fig.tight_layout(rect=(0, 0.7 / (2.6 * nrows), 1, 1))
    return fig


def depth_words(depths: Mapping[str, int | None]) -> str:
    """"smollm2-135m 30 blocks, gemma3-270m 18 blocks" (a model of unknown depth: "depth unknown, left out")."""
    return ", ".join(f"{m} {n} blocks" if n else f"{m} (depth unknown, left out)" for m, n in depths.items())

