"""The atom browser of chapter 5: sampled units' top contexts, shaded, as one static offline HTML block.

For each sampled unit (a neuron, a feature or an atom at one layer) a *card* shows what SAE
dashboards show: the unit's top-activating held-out contexts with every token shaded by the unit's
activation on it, a histogram of its held-out activations, its firing frequency and the
specificity proxies of the chapter. Select boxes (layer, kind, unit) switch between cards with a
few lines of inline script; without script every card is shown, one after another. Nothing is
fetched at view time: the CSS, the script and the histograms (inline SVG) are all in the HTML.

- `row_table(cache, layer)`: (context, position) -> activation row (-1 where the harvest stored
  none: the attention sink, outliers), to find the rows of the tokens around a top activation.
- `unit_cards(cache, layer, kind, top, units, acts, ...)`: the cards of some units, from the
  chapter's `interpret.topk_activations` result and `interpret.unit_activations` of those units.
- `build_html(cards)`: the HTML block (for `IPython.display.HTML`); `standalone_page(block)`:
  the same as a whole page, to save beside the figures.

Token text comes from the corpus and is escaped everywhere it appears; nothing else in the block
is data. Shading: the background's opacity is |activation| / the unit's largest held-out
|activation| (orange for positive values, blue for negative ones: neurons are signed).
"""
from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .results import fmt

POSITIVE = (255, 136, 0)    # shading colour of positive activations (orange)
NEGATIVE = (30, 120, 255)   # and of negative ones (blue)


@dataclass(frozen=True)
class Window:
    """A context around one top activation: token strings, the unit's activation on each (None
    where the harvest stored no activation), the index of the activating token, its document."""

    tokens: Sequence[str]
    acts: Sequence[float | None]
    focus: int
    doc_id: int = -1

    def __post_init__(self):
        if len(self.tokens) != len(self.acts):
            raise ValueError(f"a window needs one activation per token, got {len(self.tokens)} tokens "
                             f"and {len(self.acts)} activations")
        if not 0 <= self.focus < len(self.tokens):
            raise ValueError(f"focus {self.focus} is outside the window of {len(self.tokens)} tokens")


@dataclass(frozen=True)
class UnitCard:
    """One unit of the browser: its kind and layer, top windows (strongest first), its activations
    on the held-out rows (the histogram) and named statistics shown beside it, in order."""

    kind: str
    layer: int
    unit: int
    windows: Sequence[Window]
    values: Sequence[float] | np.ndarray | torch.Tensor
    stats: Mapping[str, float | int | str] = field(default_factory=dict)
    scale: float | None = None
    """|activation| shaded at full opacity; default: the largest |value| (held-out rows and windows)."""

    def full_scale(self) -> float:
        if self.scale is not None:
            return float(self.scale)
        v = np.abs(np.asarray(self.values, dtype=np.float64))
        w = [abs(a) for win in self.windows for a in win.acts if a is not None]
        return float(max(v.max(initial=0.0), max(w, default=0.0)))


# ---- from the chapter's data -------------------------------------------------------------------

def row_table(cache, layer: int) -> torch.Tensor:
    """(n_contexts, ctx_len) int64: the activation row (reader order) of every harvested token of
    `layer`, -1 for a token the harvest did not store (attention sink, outlier)."""
    n = cache.n_kept(layer)
    table = torch.full(tuple(cache.token_ids.shape), -1, dtype=torch.int64)
    rows = torch.arange(n, dtype=torch.int64)
    c, p = cache.locate(layer, rows)
    table[c, p] = rows
    return table


def unit_cards(cache, layer: int, kind: str, top, units: Sequence[int] | torch.Tensor, acts: torch.Tensor,
               stats: Mapping[int, Mapping[str, float | int | str]] | None = None, *, n_contexts: int = 8,
               before: int = 12, after: int = 12, rows: torch.Tensor | None = None, tokenizer=None) -> list[UnitCard]:
    """The cards of `units` at `layer` of a held-out `cache`.

    top: the `interpret.TopK` of the units' kind at this layer (their top rows, in score order);
    acts: `interpret.unit_activations(cache.reader(layer), encode, units)`, (n_rows, len(units));
    stats: per unit, extra named numbers (the chapter's proxies), shown after the firing frequency;
    rows: `row_table(cache, layer)`, when already built. Each card shows up to `n_contexts` top
    windows of `before` + 1 + `after` tokens.
    """
    units = [int(u) for u in torch.as_tensor(units).reshape(-1).tolist()]
    acts = torch.as_tensor(acts, dtype=torch.float32)
    if acts.ndim != 2 or acts.shape[1] != len(units) or acts.shape[0] != top.n_rows:
        raise ValueError(f"acts must be (n_rows={top.n_rows}, len(units)={len(units)}), got {tuple(acts.shape)}")
    rows = row_table(cache, layer) if rows is None else rows
    cards = []
    for i, u in enumerate(units):
        picked = top.rows[u][top.rows[u] >= 0][:n_contexts]
        windows = []
        for ctx in cache.contexts(layer, picked, before=before, after=after, tokenizer=tokenizer):
            lo = ctx.position - ctx.focus
            rr = rows[ctx.context, lo:lo + len(ctx.tokens)].tolist()
            windows.append(Window(ctx.tokens, [float(acts[r, i]) if r >= 0 else None for r in rr], ctx.focus, ctx.doc_id))
        col = acts[:, i]
        st = {"firing frequency": float(top.frequency[u]),
              "held-out tokens active": f"{int(top.n_active[u])} of {top.n_rows}",
              "max |activation|": float(top.max_abs[u])}
        st.update((stats or {}).get(u, {}))
        cards.append(UnitCard(kind, int(layer), u, windows, col.numpy(), st, scale=float(top.max_abs[u]) or None))
    return cards


# ---- HTML ------------------------------------------------------------------------------------

def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _slug(x) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(x)).strip("-") or "x"


def _visible(token: str) -> str:
    return token.replace("\r", "").replace("\n", "⏎").replace("\t", "␉")


def shade(act: float | None, scale: float) -> float:
    """Background opacity of a token: |act| / scale, clipped to [0, 1], rounded to 2 decimals."""
    if act is None or not math.isfinite(act) or scale <= 0:
        return 0.0
    return round(min(abs(act) / scale, 1.0), 2)


def _token(tok: str, act: float | None, scale: float, focus: bool, num: Callable) -> str:
    text = _e(_visible(tok))
    cls = ' class="ab-f"' if focus else ""
    if act is None:
        return f'<span class="ab-x{" ab-f" if focus else ""}" title="not stored">{text}</span>'
    a = shade(act, scale)
    if a == 0.0:
        return f"<span{cls}>{text}</span>"
    r, g, b = POSITIVE if act > 0 else NEGATIVE
    return f'<span{cls} style="background:rgba({r},{g},{b},{a:g})" title="{_e(num(float(act)))}">{text}</span>'


def _window(w: Window, scale: float, num: Callable) -> str:
    a = w.acts[w.focus]
    toks = "".join(_token(t, x, scale, i == w.focus, num) for i, (t, x) in enumerate(zip(w.tokens, w.acts)))
    doc = f' title="document {int(w.doc_id)}"' if w.doc_id >= 0 else ""
    return (f'<div class="ab-row"><span class="ab-v"{doc}>{_e(num(float(a)) if a is not None else "—")}</span>'
            f'<span class="ab-t">{toks}</span></div>')


def histogram_svg(values, num: Callable = fmt, *, bins: int = 24, width: int = 260, height: int = 64) -> str:
    """An inline SVG histogram of the active (non-zero) values (bars orange >= 0, blue < 0)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v) & (v != 0)]
    if v.size == 0:
        return '<p class="ab-note">never active on the held-out tokens</p>'
    lo, hi = min(0.0, float(v.min())), max(0.0, float(v.max()))
    if hi == lo:
        hi = lo + 1.0
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    top, pad, foot = max(int(counts.max()), 1), 2, 14
    bw = (width - 2 * pad) / bins
    bars = []
    for i, c in enumerate(counts.tolist()):
        if not c:
            continue
        bh = max(c / top * (height - 12), 1.0)
        r, g, b = POSITIVE if (edges[i] + edges[i + 1]) / 2 >= 0 else NEGATIVE
        bars.append(f'<rect x="{pad + i * bw:.1f}" y="{height - bh:.1f}" width="{max(bw - 1, 1):.1f}" '
                    f'height="{bh:.1f}" fill="rgb({r},{g},{b})"><title>{_e(num(float(edges[i])))} to '
                    f'{_e(num(float(edges[i + 1])))}: {c}</title></rect>')
    zero = pad + (0 - lo) / (hi - lo) * (width - 2 * pad)
    axis = (f'<line x1="{pad}" y1="{height + .5}" x2="{width - pad}" y2="{height + .5}" stroke="currentColor" '
            f'stroke-opacity=".5"/><line x1="{zero:.1f}" y1="{height}" x2="{zero:.1f}" y2="{height + 4}" '
            f'stroke="currentColor"/>')
    labels = (f'<text x="{pad}" y="{height + foot - 2}" font-size="9" fill="currentColor">{_e(num(lo))}</text>'
              f'<text x="{width - pad}" y="{height + foot - 2}" font-size="9" fill="currentColor" '
              f'text-anchor="end">{_e(num(hi))}</text>'
              f'<text x="{width - pad}" y="9" font-size="9" fill="currentColor" text-anchor="end">max {top}</text>')
    return (f'<svg class="ab-hist" width="{width}" height="{height + foot}" viewBox="0 0 {width} {height + foot}" '
            f'role="img" aria-label="histogram of {v.size} active held-out activations">{"".join(bars)}{axis}'
            f'{labels}</svg>')


def _card(c: UnitCard, dom_id: str, num: Callable) -> str:
    scale = c.full_scale()
    label = f"unit {int(c.unit)}"
    stats = "".join(f"<dt>{_e(k)}</dt><dd>{_e(num(v) if isinstance(v, float) else v)}</dd>" for k, v in c.stats.items())
    n = int(np.count_nonzero(np.asarray(c.values, dtype=np.float64)))
    windows = "".join(_window(w, scale, num) for w in c.windows) or '<p class="ab-note">no active context</p>'
    return (f'<div class="ab-card" id="{dom_id}-{_slug(c.kind)}-{_slug(c.layer)}-{int(c.unit)}" '
            f'data-kind="{_e(c.kind)}" data-layer="{_e(c.layer)}" data-unit="{int(c.unit)}" data-label="{_e(label)}">'
            f'<div class="ab-head">{_e(c.kind)} · layer {_e(c.layer)} · {_e(label)}</div>'
            f'<div class="ab-meta"><dl class="ab-stats">{stats}</dl><figure class="ab-fig">'
            f'{histogram_svg(c.values, num)}<figcaption>activations on the {n} held-out tokens where it is active'
            f'</figcaption></figure></div><div class="ab-ctxs">{windows}</div></div>')


_CSS = """#__ID__{margin:1em 0;font-size:.9rem}
#__ID__ [hidden]{display:none!important}
#__ID__ .ab-bar{display:flex;flex-wrap:wrap;gap:.4em 1em;align-items:center;margin:.3em 0 .6em}
#__ID__ .ab-bar select,#__ID__ .ab-bar button{font:inherit;padding:1px 4px}
#__ID__ .ab-card{border:1px solid rgba(128,128,128,.4);border-radius:6px;padding:.5em .8em;margin:.5em 0}
#__ID__ .ab-head{font-weight:bold;margin-bottom:.3em}
#__ID__ .ab-meta{display:flex;flex-wrap:wrap;gap:.5em 2em;align-items:flex-start}
#__ID__ .ab-stats{display:grid;grid-template-columns:auto auto;gap:0 .8em;margin:0;font-size:.85rem}
#__ID__ .ab-stats dt{font-weight:normal;opacity:.75;margin:0}
#__ID__ .ab-stats dd{margin:0;font-variant-numeric:tabular-nums}
#__ID__ .ab-fig{margin:0;max-width:100%}
#__ID__ .ab-fig figcaption{font-size:.75rem;opacity:.75}
#__ID__ .ab-hist{max-width:100%;height:auto}
#__ID__ .ab-ctxs{margin-top:.4em;max-width:100%;overflow-x:auto}
#__ID__ .ab-row{display:flex;gap:.6em;border-top:1px solid rgba(128,128,128,.2);padding:2px 0}
#__ID__ .ab-v{flex:0 0 4.5em;text-align:right;font-variant-numeric:tabular-nums;opacity:.8}
#__ID__ .ab-t{white-space:pre-wrap;word-break:break-word;line-height:1.7;font-family:SFMono-Regular,Menlo,Consolas,monospace;font-size:.8rem}
#__ID__ .ab-t span{border-radius:2px}
#__ID__ .ab-t .ab-f{outline:1.5px solid currentColor;font-weight:bold}
#__ID__ .ab-t .ab-x{opacity:.5;text-decoration:underline dotted}
#__ID__ .ab-note{opacity:.75;font-size:.85rem;margin:.2em 0}"""

_JS = """(function(){var R=document.getElementById("__ID__");if(!R)return;
var C=[].slice.call(R.querySelectorAll(".ab-card")),S={};
["layer","kind","unit"].forEach(function(n){S[n]=R.querySelector('select[data-ab="'+n+'"]');});
var none=R.querySelector(".ab-none");
function show(){C.forEach(function(c){c.hidden=c.id!==S.unit.value;});none.hidden=S.unit.options.length>0;}
function fill(){var k=S.unit.selectedIndex;S.unit.innerHTML="";
C.forEach(function(c){if(c.getAttribute("data-layer")!==S.layer.value||c.getAttribute("data-kind")!==S.kind.value)return;
var o=document.createElement("option");o.value=c.id;o.textContent=c.getAttribute("data-label");S.unit.appendChild(o);});
S.unit.selectedIndex=k>=0&&k<S.unit.options.length?k:0;show();}
function step(d){var n=S.unit.options.length;if(n){S.unit.selectedIndex=(S.unit.selectedIndex+d+n)%n;show();}}
S.layer.onchange=fill;S.kind.onchange=fill;S.unit.onchange=show;
R.querySelector('[data-ab="prev"]').onclick=function(){step(-1);};
R.querySelector('[data-ab="next"]').onclick=function(){step(1);};
R.querySelector(".ab-bar").hidden=false;fill();})();"""


def _options(values) -> str:
    return "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)


def build_html(cards: Sequence[UnitCard], *, dom_id: str = "atom-browser", note: str | None = None,
               num: Callable = fmt) -> str:
    """The browser as one HTML block (style, controls, one card per unit, script).

    dom_id: the block's element id (make it unique if a page holds two browsers); note: a line of
    text (escaped) shown above the controls; num: the number format (default: the book's `fmt`).
    """
    dom_id = _slug(dom_id)
    layers = list(dict.fromkeys(str(c.layer) for c in cards))
    kinds = list(dict.fromkeys(str(c.kind) for c in cards))
    ids = [f"{c.kind}-{c.layer}-{c.unit}" for c in cards]
    if len(set(ids)) != len(ids):
        raise ValueError("each (kind, layer, unit) may have one card only")
    legend = ("Shading: |activation| relative to the unit's largest held-out |activation| (orange positive, "
              "blue negative); the activating token is outlined; faded, dotted: a token the harvest did not "
              "store (no activation); hover a token for its value. Left: the activation on the outlined token.")
    bar = (f'<div class="ab-bar" hidden><label>layer <select data-ab="layer">{_options(layers)}</select></label>'
           f'<label>kind <select data-ab="kind">{_options(kinds)}</select></label>'
           f'<label>unit <select data-ab="unit"></select></label>'
           f'<button type="button" data-ab="prev" aria-label="previous unit">‹</button>'
           f'<button type="button" data-ab="next" aria-label="next unit">›</button></div>'
           f'<p class="ab-note ab-none" hidden>no sampled unit of this kind at this layer</p>')
    body = "".join(_card(c, dom_id, num) for c in cards)
    head = f'<p class="ab-note">{_e(note)}</p>' if note else ""
    return (f'<div id="{dom_id}" class="atom-browser"><style>{_CSS.replace("__ID__", dom_id)}</style>{head}'
            f'<p class="ab-note">{_e(legend)}</p>{bar}{body}<script>{_JS.replace("__ID__", dom_id)}</script></div>')


def standalone_page(block: str, title: str = "Atom browser") -> str:
    """`build_html`'s block as a whole HTML page (UTF-8, no external resource)."""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>{_e(title)}</title><style>body{{font-family:'
            f'system-ui,sans-serif;max-width:60rem;margin:1em auto;padding:0 1em}}</style></head><body>'
            f'<h1>{_e(title)}</h1>{block}</body></html>\n')
