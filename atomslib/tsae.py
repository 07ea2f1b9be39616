"""Threshold SAE (atoms) and ReLU SAE (features): one module, one code path.

Layout (DESIGN.md): units are rows. ``W_enc`` (N, H), ``W_dec`` (N, H), ``b_enc`` (N,),
``b_dec`` (H,), ``threshold`` (N,)::

    pre  = (m - b_dec) @ W_enc.T + b_enc          # b_dec is subtracted first (SAELens convention)
    z    = pre * 1[pre > threshold]               # sigma_tau; the ReLU SAE is the same with tau = 0
    m_hat = z @ W_dec + b_dec

Why subtract ``b_dec`` before encoding: it makes ``b_dec`` the centre the encoder measures from
(initialised at the data mean), which helps optimisation; it is only a reparametrisation
(``b_enc' = b_enc - W_enc b_dec``), so an exporter may fold it away.

A :class:`TSAE` always lives in the **raw activation space**. The trainer works in a normalised
(and optionally AIP-whitened) space and, when it hands a model back or writes a checkpoint
snapshot, folds that input transform into the weights (:meth:`TSAE.fold_input_transform`). The
fold is exact: the pre-activations, and so the thresholds and the codes, are unchanged, so
``encode``/``decode`` take and return raw activations whatever ``normalize``/``whiten`` were. What
was folded is recorded in ``model.fit_info`` (``input_scale``, ``whitened``) and saved with it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ._util import atomic_save_safetensors, atomic_write_json, check_acts, device_of, sha256_file
from .tsae_config import TSAEConfig

Tensor = torch.Tensor

FORMAT = "atoms-tsae"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PARAM_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")




class SAEOutput(NamedTuple):
    """What :meth:`TSAE.forward` returns (rows are tokens)."""

    m_hat: Tensor
    """(n, H) reconstruction in the raw activation space."""
    codes: Tensor
    """(n, N) codes z (zero where a unit does not fire)."""
    pre_acts: Tensor
    """(n, N) pre-activations, before the threshold."""
    l0: Tensor
    """(n,) number of active units per token."""


class TSAE(nn.Module):
    """A threshold SAE (``activation="threshold"``) or ReLU SAE (``"relu"``, a JumpReLU with tau=0).

    Parameters live in the raw activation space (see the module docstring). ``dictionary()``
    returns the decoder rows, so that ``codes @ dictionary() + b_dec == decode(codes)``.
    """

    def __init__(self, cfg: TSAEConfig, *, init: bool = True) -> None:
        super().__init__()
        if not isinstance(cfg, TSAEConfig):
            raise TypeError(f"cfg must be a TSAEConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        N, H, dt = cfg.n_units, cfg.d_model, cfg.torch_dtype
        dev = device_of(cfg.device)
        # Thresholds stay in (at least) float32: Adam's lr-sized steps vanish in bf16/fp16.
        thr_dt = torch.float64 if dt == torch.float64 else torch.float32
        self.W_enc = nn.Parameter(torch.empty(N, H, dtype=dt, device=dev))
        self.b_enc = nn.Parameter(torch.zeros(N, dtype=dt, device=dev))
        self.W_dec = nn.Parameter(torch.empty(N, H, dtype=dt, device=dev))
        self.b_dec = nn.Parameter(torch.zeros(H, dtype=dt, device=dev))
        self.threshold = nn.Parameter(torch.zeros(N, dtype=thr_dt, device=dev),
                                      requires_grad=cfg.activation == "threshold")
        self.fit_info: dict[str, Any] = {"input_scale": 1.0, "whitened": False}
        if init:
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Unit-norm random decoder rows, tied encoder (W_enc = W_dec), zero biases."""
        g = torch.Generator().manual_seed(self.cfg.seed)
        W = torch.randn(self.cfg.n_units, self.cfg.d_model, generator=g, dtype=torch.float64)
        W /= W.norm(dim=1, keepdim=True)
        self.W_dec.copy_(W)
        self.W_enc.copy_(W)
        self.b_enc.zero_()
        self.b_dec.zero_()
        self.threshold.fill_(self.cfg.init_threshold if self.cfg.activation == "threshold" else 0.0)

    # ---- inference -----------------------------------------------------------------------------
    def _check(self, m: Tensor, name: str, width: int) -> Tensor:
        m = check_acts(m, name, width)
        return m.to(device=self.W_enc.device, dtype=self.W_enc.dtype)

    def pre_acts(self, m: Tensor) -> Tensor:
        """(n, N) pre-activations ``(m - b_dec) @ W_enc.T + b_enc`` of raw activations ``m``."""
        m = self._check(m, "m", self.cfg.d_model)
        return torch.addmm(self.b_enc, m - self.b_dec, self.W_enc.T)

    def _gate(self, pre: Tensor) -> Tensor:
        return pre * (pre > self.threshold.to(pre.dtype))

    def encode(self, m: Tensor) -> Tensor:
        """(n, N) codes z = sigma_tau(pre) of raw activations ``m`` (n, H)."""
        return self._gate(self.pre_acts(m))

    def decode(self, z: Tensor) -> Tensor:
        """(n, H) reconstruction ``z @ W_dec + b_dec`` in the raw space."""
        z = self._check(z, "z", self.cfg.n_units)
        return torch.addmm(self.b_dec, z, self.W_dec)

    def forward(self, m: Tensor) -> SAEOutput:
        pre = self.pre_acts(m)
        z = self._gate(pre)
        return SAEOutput(torch.addmm(self.b_dec, z, self.W_dec), z, pre, (z != 0).sum(1))

    @torch.no_grad()
    def dictionary(self) -> Tensor:
        """(N, H) the units: decoder rows in the raw activation space (a detached copy)."""
        return self.W_dec.detach().clone()

    # ---- folding the trainer's input transform ---------------------------------------------------
    @torch.no_grad()
    def fold_input_transform(self, scale: float, A_HH: Tensor | None = None, A_inv_HH: Tensor | None = None,
                             *, whitened: bool | None = None) -> "TSAE":
        """Return the raw-space model of one trained on ``x = scale · (m @ A_HH)``.

        ``A_HH`` is the row-form input map (for the AIP whitening x = W m it is ``W.T``) and
        ``A_inv_HH`` its inverse. With x = s·m A:  pre = (x - b) W_encᵀ + c
        = (m - b A⁻¹/s)(s·W_enc Aᵀ)ᵀ + c  and  m_hat = (z W_dec + b) A⁻¹/s, so
        W_enc ← s·W_enc Aᵀ, W_dec ← W_dec A⁻¹/s, b_dec ← b_dec A⁻¹/s, while b_enc and the
        threshold are unchanged, hence so are the pre-activations and the codes. Done in float64.
        ``whitened``: whether A includes the AIP whitening (default: A given; the trainer's A may be a clip).
        """
        if (A_HH is None) != (A_inv_HH is None):
            raise ValueError("pass both A_HH and A_inv_HH, or neither")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale}")
        out = TSAE(self.cfg, init=False)
        f64 = torch.float64
        We, Wd, bd = self.W_enc.to(f64), self.W_dec.to(f64), self.b_dec.to(f64)
        if A_HH is not None:
            A, Ai = A_HH.to(We.device, f64), A_inv_HH.to(We.device, f64)
            We, Wd, bd = We @ A.T, Wd @ Ai, bd @ Ai
        out.W_enc.copy_(We * scale)
        out.W_dec.copy_(Wd / scale)
        out.b_dec.copy_(bd / scale)
        out.b_enc.copy_(self.b_enc)
        out.threshold.copy_(self.threshold)
        out.fit_info = dict(self.fit_info)
        out.fit_info["input_scale"] = float(scale) * float(self.fit_info.get("input_scale", 1.0))
        out.fit_info["whitened"] = (A_HH is not None if whitened is None else whitened) or bool(self.fit_info.get("whitened"))
        return out

    # ---- persistence -----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (atomically, each)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {k: getattr(self, k).detach() for k in PARAM_NAMES}
        atomic_save_safetensors(d / WEIGHTS_FILE, tensors, metadata={"format": FORMAT})
        # The config records the weights' checksum, written after them: a reader never pairs a
        # config with weights from another save, even if a crash fell between the two writes.
        atomic_write_json(d / CONFIG_FILE, {
            "format": FORMAT, "format_version": FORMAT_VERSION, "config": self.cfg.to_dict(),
            "fit_info": self.fit_info, "weights_sha256": sha256_file(d / WEIGHTS_FILE),
        })
        return d

    @classmethod
    def load(cls, directory: str | Path, *, device: str | None = None) -> "TSAE":
        """Load a model written by :meth:`save`, checking files, checksum, shapes and dtypes."""
        from safetensors.torch import load_file

        d = Path(directory)
        cfg_path, w_path = d / CONFIG_FILE, d / WEIGHTS_FILE
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(f"TSAE.load({str(d)!r}): missing {p.name}; expected a folder written by "
                                        f"TSAE.save (config.json + model.safetensors)")
        try:
            meta = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"TSAE.load: {cfg_path} is not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
            raise ValueError(f"TSAE.load: {cfg_path} is not an atoms TSAE config (format != {FORMAT!r})")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"TSAE.load: {cfg_path} has format_version {meta['format_version']}, newer than this "
                             f"atomslib reads ({FORMAT_VERSION}); upgrade atomslib")
        if meta.get("weights_sha256") and meta["weights_sha256"] != sha256_file(w_path):
            raise ValueError(f"TSAE.load: {w_path.name} does not match the checksum in {cfg_path.name} "
                             f"(a partial or mixed save?); save the model again")
        cfg_d = dict(meta["config"])
        if device is not None:
            cfg_d["device"] = device
        cfg = TSAEConfig.from_dict(cfg_d)
        tensors = load_file(str(w_path))
        model = cls(cfg, init=False)
        missing = [k for k in PARAM_NAMES if k not in tensors]
        if missing:
            raise ValueError(f"TSAE.load: {w_path} lacks tensors {missing}")
        with torch.no_grad():
            for k in PARAM_NAMES:
                p, t = getattr(model, k), tensors[k]
                if tuple(t.shape) != tuple(p.shape):
                    raise ValueError(f"TSAE.load: {k} has shape {tuple(t.shape)} in {w_path.name} but the config "
                                     f"(d_model={cfg.d_model}, n_units={cfg.n_units}) implies {tuple(p.shape)}")
                if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                    raise ValueError(f"TSAE.load: {k} in {w_path.name} is not a finite floating tensor")
                p.copy_(t)
        model.fit_info = dict(meta.get("fit_info") or {})
        return model

    def extra_repr(self) -> str:
        c = self.cfg
        return f"d_model={c.d_model}, n_units={c.n_units}, activation={c.activation!r}"
