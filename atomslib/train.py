"""Train a threshold SAE (atoms) or a ReLU SAE (features): one trainer for both kinds of unit.

``train_tsae(acts, cfg)`` runs an explicit forward and hand-written backward per step
(:mod:`atomslib.sae_step`: sparse CSR products over the active codes), Adam (fused), a
unit-norm decoder, learning-rate warm-up and final decay, and a warm-up of the sparsity
coefficient. It logs L0, dead units and R² as it goes (:class:`TrainLog`), checkpoints every
``cfg.checkpoint_every`` steps into ``checkpoint_dir`` (one atomic safetensors file with the
model, the Adam moments, the step and the data position) and, given the same arguments again,
resumes to a result bit-identical (on CPU) to an uninterrupted run.

Randomness is counter-based (initialisation from ``cfg.seed``, each epoch's shuffle from
``(seed, epoch)``), so the data position is the only RNG state a checkpoint needs.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .health import loss_trend
from .input_map import (cap_token_norms, compose_diagonal, coordinate_clip, diagonal_of, input_scale,
                        token_norm_cap, whitening)
from .resampling import resample_dead, resample_due
from .sae_step import Params, Workspace, sae_step
from .train_data import IterStream, make_stream
from ._util import atomic_save_safetensors, check_acts, device_of
from .lock import locks_output
from .tsae import TSAE, TSAEConfig

Tensor = torch.Tensor

STATE_FILE = "trainer_state.safetensors"
# The trainer's version, bumped whenever training changes what a given TSAEConfig produces, so that neither a checkpoint
# nor a cached model (atomslib.book.unit_store keys on it) of another one is taken for this one's. 2-5: the thresholds'
# lr and its early boost (TSAEConfig.threshold_lr, threshold_lr_boost); 6: resampling every 100k tokens after 50k silent
# (resample_dead_every, dead_window_tokens); 7: the input map (atomslib.input_map: normalize, coord_std_clip) and the
# target form's start (init_l0); 8: the boost fades over a tenth (threshold_boost_frac); 9: lrs grow with the batch
# above 512 (lr_batch_exponent); 10: the target form's feedback (target_control); 11: token_clip; 12: the penalty's
# start above batch 512 (init_l0); 13: whitening about the mean (whiten_center); 14: the nearly dead resampled too, at
# residuals with the residual's encoder scale (reverted: it lived in commits 5caae74-201dd90, so 14 names that trainer);
# 15: the same with the token's encoder scale (resample_silent_intervals, resample_direction). DESIGN.md has the
# measurements behind each.
STATE_VERSION = 15
# Fields that may change between an interrupted run and its resumption without changing the result.
_RESUME_FREE = {"log_every", "checkpoint_every"}


@dataclass
class TrainLog:
    """Training history: one record per ``cfg.log_every`` steps (and the last step).

    Record keys: step, tokens, epoch, lr, lam (sparsity coefficient), loss, rec_loss,
    sparsity_loss, l0 (mean active units per token), r2 (1 - SSE/SST pooled over the interval, in
    the training space: the ``euclid`` R² when whiten=False, the ``aip`` one when whiten=True),
    dead (units silent for cfg.dead_window_tokens tokens), sparse_frac (share of steps on the
    sparse kernel), tok_per_s, and eval_r2 / eval_l0 (raw space, on eval_acts) when given.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    """The records, oldest first."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Run facts: total_steps, batch_size, input_scale, whitened, resumed_at, seconds."""

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    def series(self, key: str) -> list[Any]:
        """One key across records, e.g. ``log.series("l0")``."""
        return [r.get(key) for r in self.history]

    def to_dict(self) -> dict[str, Any]:
        return {"history": self.history, "meta": self.meta}


def _threshold_boost(cfg: TSAEConfig, step: int, total: int) -> float:
    """Extra factor on the thresholds' lr at 0-based ``step``: threshold_lr_boost_used() at the start,
    falling linearly to 1 at threshold_boost_frac of the steps (TSAEConfig.threshold_lr_boost)."""
    span = cfg.threshold_boost_frac * total
    return 1.0 + (cfg.threshold_lr_boost_used() - 1.0) * max(0.0, 1.0 - step / span) if span > 0 else 1.0


def _schedule(cfg: TSAEConfig, step: int, total: int) -> tuple[float, float]:
    """(learning-rate multiplier, sparsity-coefficient multiplier) at 0-based ``step``."""
    warm = math.ceil(cfg.lr_warmup_frac * total)
    decay = math.ceil(cfg.lr_decay_frac * total)
    lr = min(1.0, (step + 1) / warm) if warm else 1.0
    if decay and step >= total - decay:
        lr *= (total - step) / decay
    sw = math.ceil(cfg.sparsity_warmup_frac * total)
    return lr, (min(1.0, (step + 1) / sw) if sw else 1.0)


class _Run:
    """The mutable state of one training run (what a checkpoint holds)."""

    def __init__(self, cfg: TSAEConfig, dev: torch.device, n_tokens: int) -> None:
        self.cfg, self.dev = cfg, dev
        self.model = TSAE(cfg)                       # training-space parameters
        self.step = 0
        self.scale = 1.0
        self.A: Tensor | None = None                # x = scale · (m @ A): atomslib.input_map
        self.A_inv: Tensor | None = None
        self.A_diag: Tensor | None = None           # A's diagonal when A is diagonal (a cheaper to_x)
        self.token_centre, self.token_cap = None, None  # TSAEConfig.token_clip (input_map.token_norm_cap)
        self.since_fired = torch.zeros(cfg.n_units, dtype=torch.int64)
        self.last_l0: float | None = None           # the previous batch's mean L0 (target_control="feedback")
        self.log_lam = 0.0                          # the feedback's integral: log of the coefficient's slow factor
        m = self.model
        lr = cfg.lr_used()
        groups = [{"params": [m.W_enc, m.b_enc, m.W_dec, m.b_dec], "lr": lr, "base_lr": lr}]
        if cfg.activation == "threshold":
            tlr = cfg.threshold_lr_used(n_tokens)
            groups.append({"params": [m.threshold], "lr": tlr, "base_lr": tlr})
        fused = dev.type in ("cpu", "cuda")
        self.opt = torch.optim.Adam(groups, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=1e-8, fused=fused)
        self.names = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if len(groups) > 1 else [])

    def params(self) -> list[torch.nn.Parameter]:
        return [getattr(self.model, k) for k in self.names]

    def raw_model(self) -> TSAE:
        return self.model.fold_input_transform(self.scale, self.A, self.A_inv, whitened=self.cfg.whiten)

    def to_x(self, m: Tensor) -> Tensor:
        """Raw rows -> training space (a new tensor)."""
        m = m.to(self.dev, self.cfg.torch_dtype)
        if self.A_diag is not None:
            return m * (self.A_diag.to(m) * self.scale)
        x = m @ self.A.to(m) if self.A is not None else m.clone()
        return x.mul_(self.scale)

    # ---- checkpoint ----------------------------------------------------------------------------
    def save(self, directory: Path, stream_state: dict, fingerprint: dict, log: TrainLog, total: int,
             interval: dict | None = None) -> None:
        tensors = {f"param.{k}": p.detach() for k, p in zip(self.names, self.params())}
        for k, p in zip(self.names, self.params()):
            st = self.opt.state.get(p, {})
            for sk in ("step", "exp_avg", "exp_avg_sq"):
                if sk in st:
                    tensors[f"adam.{k}.{sk}"] = st[sk].detach().reshape(-1) if sk == "step" else st[sk].detach()
        tensors["since_fired"] = self.since_fired
        if self.A is not None:
            tensors["transform.A"], tensors["transform.A_inv"] = self.A, self.A_inv
        if self.token_centre is not None:
            tensors["transform.token_centre"] = self.token_centre
        state = {"version": STATE_VERSION, "step": self.step, "total_steps": total, "scale": self.scale,
                 "token_cap": self.token_cap,
                 "last_l0": self.last_l0, "log_lam": self.log_lam, "config": self.cfg.to_dict(),
                 "stream": stream_state, "data": fingerprint, "log": log.to_dict(),
                 # the log's running totals since its last record, so a resumed log equals an uninterrupted one
                 "interval": {k: v for k, v in (interval or {}).items() if k not in ("t0", "tok")}}
        directory.mkdir(parents=True, exist_ok=True)
        # One file, one atomic rename: a checkpoint is either wholly the old one or wholly the new.
        atomic_save_safetensors(directory / STATE_FILE, tensors, metadata={"state": json.dumps(state)})
        self.raw_model().save(directory)             # a loadable snapshot, for inspection

    def load(self, path: Path, fingerprint: dict) -> dict:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            state = json.loads(f.metadata()["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{path} was written by another trainer version; use a new checkpoint_dir or resume=False")
        ours, theirs = self.cfg.to_dict(), state["config"]
        diff = sorted(k for k in ours if k not in _RESUME_FREE and ours[k] != theirs.get(k))
        if diff:
            pairs = ", ".join(f"{k}: {theirs.get(k)!r} there vs {ours[k]!r} now" for k in diff)
            raise ValueError(f"checkpoint_dir holds a run with another config ({pairs}); use another checkpoint_dir, "
                             f"resume=False to start over, or the same config to resume")
        if state["data"] != fingerprint:
            raise ValueError(f"checkpoint_dir holds a run on other data ({state['data']} vs {fingerprint}); use "
                             f"another checkpoint_dir or resume=False")
        with torch.no_grad():
            for k, p in zip(self.names, self.params()):
                p.copy_(tensors[f"param.{k}"])
                if f"adam.{k}.exp_avg" in tensors:
                    self.opt.state[p] = {
                        "step": tensors[f"adam.{k}.step"].reshape(()).to(self.dev, torch.float32),
                        "exp_avg": tensors[f"adam.{k}.exp_avg"].to(self.dev),
                        "exp_avg_sq": tensors[f"adam.{k}.exp_avg_sq"].to(self.dev)}
        self.since_fired = tensors["since_fired"]
        self.A, self.A_inv = tensors.get("transform.A"), tensors.get("transform.A_inv")
        self.A_diag = diagonal_of(self.A)
        self.token_centre, self.token_cap = tensors.get("transform.token_centre"), state.get("token_cap")
        self.step, self.scale = int(state["step"]), float(state["scale"])
        self.last_l0, self.log_lam = state.get("last_l0"), float(state.get("log_lam", 0.0))
        return state


def _init_from_sample(run: _Run, sample: Tensor, unit_scale: float) -> None:
    """Normalisation scale and initial b_dec (the mean) from a sample of raw rows."""
    m = sample.to(run.dev, torch.float64)
    if run.A is not None:
        m = m @ run.A.to(m)
    run.scale = input_scale(m, run.cfg.normalize)
    with torch.no_grad():
        run.model.b_dec.copy_(m.mean(0) * run.scale)
        run.model.threshold.mul_(unit_scale)


@torch.no_grad()
def _init_thresholds_at_rate(run: _Run, sample: Tensor, l0: float) -> None:
    """Each unit's threshold at the quantile of its initial pre-activations on (up to 8192 rows of) the
    sample where it fires on a share l0 / n_units of them (TSAEConfig.init_l0), never below 0."""
    x = run.to_x(sample[:8192])
    m = run.model
    pre_nN = (x - m.b_dec) @ m.W_enc.T + m.b_enc
    k = min(x.shape[0], max(1, math.ceil((1.0 - l0 / run.cfg.n_units) * x.shape[0])))
    m.threshold.copy_(pre_nN.kthvalue(k, dim=0).values.clamp_min(0.0).to(m.threshold))


@torch.no_grad()
def _init_directions(run: _Run, D: Tensor) -> None:
    """Decoder and tied encoder rows from raw-space directions D (N, H), unit norm in the training space."""
    W = D.detach().to("cpu", torch.float64)
    if run.A is not None:
        W = W @ run.A.to(W)          # x = s·m A: a raw direction d is d A in the training space
    W = W / W.norm(dim=1, keepdim=True)
    run.model.W_dec.copy_(W.to(run.model.W_dec))
    run.model.W_enc.copy_(W.to(run.model.W_enc))


@locks_output("checkpoint_dir", "atoms train", need_bytes=lambda acts, cfg, **_: _checkpoint_bytes(cfg))
def train_tsae(acts: Any, cfg: TSAEConfig, *, aip: Any = None, checkpoint_dir: str | Path | None = None,
               resume: bool = True, progress: bool = True, eval_acts: Tensor | None = None,
               log: TrainLog | Callable[[dict], Any] | None = None, init_dictionary: Tensor | None = None) -> TSAE:
    """Train a TSAE (``cfg.activation="threshold"``) or a ReLU SAE (``"relu"``) on ``acts``.

    acts: an (n, H) tensor, or a re-iterable of (b, H) batches (a list, a cache reader; float16
        is fine). Iterables are read in their own order and must yield the same rows each pass.
    aip: an :class:`atomslib.aip.AIP` (or its (H, H) whitening matrix W) when ``cfg.whiten``.
    checkpoint_dir: where to checkpoint (and, with ``resume``, to resume from); it also ends up
        holding the final model (``TSAE.load(checkpoint_dir)``). It is locked while training
        (``atomslib.lock``) and checked for write access and free space before the first step.
    eval_acts: (n, H) held-out activations; their raw-space R² and L0 are logged.
    log: a :class:`TrainLog` to fill, or a callable given each record (it may raise to stop).
    init_dictionary: (n_units, H) raw-space directions to start from instead of the seeded random
        ones (decoder and tied encoder rows, unit norm in the training space; biases and thresholds
        as usual), e.g. the true atoms of a planted problem to ask whether training stays there.
        Ignored when resuming from a checkpoint.

    Returns the trained model in the raw activation space, with ``model.train_log``.
    """
    if not isinstance(cfg, TSAEConfig):
        raise TypeError(f"cfg must be a TSAEConfig, got {type(cfg).__name__}")
    H, N, B = cfg.d_model, cfg.n_units, cfg.batch_size
    dev = device_of(cfg.device)
    stream = make_stream(acts, H, cfg.shuffle, cfg.seed)
    if cfg.whiten and aip is None:
        raise ValueError("TSAEConfig.whiten=True needs aip= (an atomslib.aip.AIP fitted on the same layer, e.g. "
                         "ActivationCache(dir).aip(layer)); or set whiten=False")
    if aip is not None and not cfg.whiten:
        warnings.warn("aip= is ignored because TSAEConfig.whiten=False", stacklevel=2)
    if eval_acts is not None:
        eval_acts = check_acts(eval_acts, "eval_acts")
        if eval_acts.shape[1] != H:
            raise ValueError(f"eval_acts has width {eval_acts.shape[1]} but TSAEConfig.d_model={H}")
    if init_dictionary is not None:
        init_dictionary = check_acts(init_dictionary, "init_dictionary")
        if tuple(init_dictionary.shape) != (N, H):
            raise ValueError(f"init_dictionary has shape {tuple(init_dictionary.shape)} but TSAEConfig (n_units={N}, "
                             f"d_model={H}) needs ({N}, {H})")
        if not bool((init_dictionary.norm(dim=1) > 0).all()):
            raise ValueError("init_dictionary has an all-zero row: every unit needs a direction")
    trainlog = log if isinstance(log, TrainLog) else TrainLog()
    callback = log if callable(log) and not isinstance(log, TrainLog) else None
    if log is not None and not isinstance(log, TrainLog) and callback is None:
        raise TypeError("log must be a TrainLog or a callable taking a record dict")

    # Budget. A tensor's length is known; an iterable is counted once when n_epochs asks for it.
    if cfg.n_epochs is not None:
        n_rows = stream.n if not isinstance(stream, IterStream) else stream.count_rows()
        n_tokens = max(1, round(cfg.n_epochs * n_rows))
    else:
        n_tokens = int(cfg.n_tokens)
    total = math.ceil(n_tokens / B)

    run = _Run(cfg, dev, n_tokens)
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    resumed_interval: dict = {}
    if ckdir is not None and resume and (ckdir / STATE_FILE).is_file():
        state = run.load(ckdir / STATE_FILE, stream.fingerprint())
        resumed_interval = state.get("interval") or {}
        stream.restore(state["stream"])
        trainlog.history[:] = state["log"]["history"]
        trainlog.meta.update(state["log"]["meta"])
        trainlog.meta["resumed_at"] = run.step
    else:
        if cfg.whiten:
            run.A, run.A_inv = whitening(aip, H, center=cfg.whiten_center)
        sample = stream.peek(cfg.norm_estimate_tokens)
        xs = sample.double() @ run.A if run.A is not None else sample.double()
        n_clipped = 0
        if cfg.coord_std_clip is not None:
            c_H = coordinate_clip(xs, cfg.coord_std_clip)
            n_clipped = int((c_H < 1).sum())
            if n_clipped:
                run.A, run.A_inv = compose_diagonal(run.A, run.A_inv, c_H)
                run.A_diag = diagonal_of(run.A)
                xs = xs * c_H
        # Scale-like hyperparameters are in normalised units; without normalisation they follow the
        # data's RMS per coordinate instead.
        rms = float(xs.norm(dim=1).mean()) / math.sqrt(H)
        unit = 1.0 if cfg.normalize != "none" else rms
        _init_from_sample(run, sample, unit)
        if cfg.token_clip_used() is not None:
            run.token_centre, run.token_cap = token_norm_cap(xs * run.scale, cfg.token_clip_used())
        if init_dictionary is not None:
            _init_directions(run, init_dictionary)
        if cfg.init_l0_used() is not None:
            _init_thresholds_at_rate(run, sample, cfg.init_l0_used())
        trainlog.meta.update({"total_steps": total, "batch_size": B, "n_tokens": n_tokens, "input_scale": run.scale,
                              "whitened": bool(cfg.whiten), "coordinates_clipped": n_clipped, "unit": unit,
                              "threshold_lr": run.opt.param_groups[-1]["base_lr"] if cfg.activation == "threshold" else None,
                              "decay_start": total - math.ceil(cfg.lr_decay_frac * total), "data": stream.fingerprint(),
                              "init": "random" if init_dictionary is None else "init_dictionary"})
    unit = float(trainlog.meta.get("unit", 1.0))
    eps = cfg.bandwidth * unit
    fingerprint = stream.fingerprint()

    ws = Workspace()
    m = run.model
    params = run.params()
    interval = {"sse": 0.0, "sst": 0.0, "loss": 0.0, "rec": 0.0, "spl": 0.0, "l0": 0.0, "n": 0, "sparse": 0,
                "t0": time.perf_counter(), "tok": 0, **resumed_interval}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=run.step, unit="step", desc=f"train {cfg.activation} SAE", leave=False)
    feedback = cfg.sparsity_form == "target" and cfg.target_control == "feedback"
    t_start = time.perf_counter()
    while run.step < total:
        step = run.step
        size = min(B, n_tokens - step * B)
        x_BH = run.to_x(stream.take(size))
        if run.token_cap is not None:
            cap_token_norms(x_BH, run.token_centre, run.token_cap)
        lr_mult, lam_mult = _schedule(cfg, step, total)
        lam = cfg.sparsity_coeff * lam_mult
        if feedback:
            lam *= math.exp(run.log_lam) * cfg.feedback_multiplier(run.last_l0)
        for g in run.opt.param_groups:
            g["lr"] = g["base_lr"] * lr_mult
        if len(run.opt.param_groups) > 1:
            run.opt.param_groups[1]["lr"] *= _threshold_boost(cfg, step, total)
        p = Params(m.W_enc.data, m.b_enc.data, m.W_dec.data, m.b_dec.data, m.threshold.data)
        grads, st = sae_step(p, x_BH, activation=cfg.activation, lam=lam, eps=eps, ste_to_pre=cfg.ste_to_pre,
                             form="penalty" if feedback else cfg.sparsity_form, target_l0=cfg.target_l0,
                             unit_norm_decoder=cfg.unit_norm_decoder, kernel=cfg.kernel, ws=ws)
        if not math.isfinite(st.loss):
            raise FloatingPointError(f"training diverged at step {step} (loss={st.loss}); lower lr (used: "
                                     f"{cfg.lr_used():g} at batch {B})")
        gs = [grads.W_enc_NH, grads.b_enc_N, grads.W_dec_NH, grads.b_dec_H] + (
            [grads.thr_N.to(m.threshold.dtype)] if len(params) > 4 else [])
        if cfg.unit_norm_decoder:
            # Only the tangential part of the decoder gradient: the radial part is undone by the
            # renormalisation below and would only pollute Adam's moments.
            gd = gs[2]
            gd -= (gd * m.W_dec.data).sum(1, keepdim=True) * m.W_dec.data
        for prm, g in zip(params, gs):
            prm.grad = g
        run.opt.step()
        with torch.no_grad():
            if cfg.unit_norm_decoder:
                m.W_dec.div_(m.W_dec.norm(dim=1, keepdim=True).clamp_min_(1e-12))
            if cfg.activation == "threshold":
                m.threshold.clamp_(min=0.0)     # below 0 the gate would pass negative codes
        for prm in params:
            prm.grad = None
        run.last_l0 = st.l0
        if feedback and lam_mult >= 1.0:
            run.log_lam = cfg.feedback_integral(run.log_lam, st.l0, lr_mult)
        run.since_fired += size
        run.since_fired[st.fired_N.cpu() > 0] = 0
        run.step += 1
        if resample_due(cfg, run.step, total):
            n_resampled = resample_dead(run, x_BH, unit)
            trainlog.meta["resampled"] = trainlog.meta.get("resampled", 0) + n_resampled
        it = interval
        it["sse"] += st.sse; it["sst"] += st.sst; it["loss"] += st.loss; it["rec"] += st.rec_loss
        it["spl"] += st.sparsity_loss; it["l0"] += st.l0; it["n"] += 1; it["sparse"] += st.sparse; it["tok"] += size
        if bar is not None:
            bar.update(1)
        last = run.step == total
        if run.step % cfg.log_every == 0 or last:
            rec = _record(run, stream, it, lr_mult, lam, eval_acts, dev)
            for k in list(it):
                it[k] = 0.0 if k != "t0" else time.perf_counter()
            trainlog.history.append(rec)
            if bar is not None:
                bar.set_postfix(l0=f"{rec['l0']:.1f}", r2=f"{rec['r2']:.4f}", dead=rec["dead"])
            if callback is not None:
                callback(rec)
        if ckdir is not None and (last or (cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0)):
            run.save(ckdir, stream.state(), fingerprint, trainlog, total, interval)
    if bar is not None:
        bar.close()
    trainlog.meta["seconds_last_session"] = time.perf_counter() - t_start
    model = run.raw_model()
    last = trainlog.last
    model.fit_info.update({"steps": run.step, "tokens": n_tokens, "l0": last.get("l0"), "r2_train": last.get("r2"),
                           "dead": last.get("dead"), "coordinates_clipped": trainlog.meta.get("coordinates_clipped", 0),
                           "loss_trend": loss_trend(trainlog.history, trainlog.meta)})
    model.train_log = trainlog
    if ckdir is not None:
        model.save(ckdir)
    return model


@torch.no_grad()
def _record(run: _Run, stream, it: dict, lr_mult: float, lam: float, eval_acts: Tensor | None,
            dev: torch.device) -> dict[str, Any]:
    n = max(it["n"], 1)
    dt = time.perf_counter() - it["t0"]
    rec = {"step": run.step, "tokens": stream.pos, "epoch": stream.epoch,
           "lr": run.cfg.lr_used() * lr_mult, "lam": lam, "loss": it["loss"] / n, "rec_loss": it["rec"] / n,
           "sparsity_loss": it["spl"] / n, "l0": it["l0"] / n,
           "r2": 1.0 - it["sse"] / it["sst"] if it["sst"] > 0 else float("nan"),
           "dead": int((run.since_fired >= run.cfg.dead_window_tokens).sum()),
           "sparse_frac": it["sparse"] / n, "tok_per_s": it["tok"] / dt if dt > 0 else float("nan")}
    if eval_acts is not None:
        model = run.raw_model()
        sse = l0 = 0.0
        for i in range(0, eval_acts.shape[0], 8192):
            m = eval_acts[i:i + 8192].to(dev, run.cfg.torch_dtype)
            out = model(m)
            sse += float((out.m_hat - m).pow(2).sum())
            l0 += float(out.l0.sum())
        e64 = eval_acts.to(torch.float64)
        sst = float((e64 - e64.mean(0)).pow(2).sum())
        rec["eval_r2"] = 1.0 - sse / sst if sst > 0 else float("nan")
        rec["eval_l0"] = l0 / eval_acts.shape[0]
    return rec


def _checkpoint_bytes(cfg: Any) -> int:
    """Disk a checkpoint needs: 2 x (parameters + 2 Adam moments) + a model snapshot + a transform."""
    n = 2 * cfg.n_units * cfg.d_model + 2 * cfg.n_units + cfg.d_model if isinstance(cfg, TSAEConfig) else 0
    return n * cfg.torch_dtype.itemsize * 7 + 16 * cfg.n_units + 16 * cfg.d_model ** 2 if n else 0
