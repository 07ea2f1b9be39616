"""Atomic inner product (AIP): the geometry in which a layer's atoms are close to orthogonal.

Spec §1. If activations are m = D x with codes x whose second moment is isotropic,
E[x xᵀ] = σ² I, then E[m mᵀ] = σ² D Dᵀ (spec layout, H x N), so (E[m mᵀ])⁻¹ = σ⁻² S̃ is a
*multiple* of the paper's normalised inner-product matrix S̃ = (D Dᵀ)⁻¹ (D must span R^H).
Cosines cannot tell a multiple apart, so the AIP is estimated without knowing D as

    S = (E[m mᵀ] + ridge · (tr E[m mᵀ] / H) · I)⁻¹,

the inverse of the *uncentred* second moment of the layer's activations. Without the assumption
(unequal variances, correlated or nonnegative codes: E[x xᵀ] = C ≠ σ² I) the estimate is
(D C Dᵀ)⁻¹, the AIP of D C^{1/2} rather than of D; `theory.code_second_moment` and chapter 1 show
how far that moves the atoms' coherence. The ridge is **relative**
(a multiple of the mean eigenvalue), so `ridge=1e-6` means the same thing for every layer and
model width; the authors used no ridge, which is our default. `⟨u, v⟩_S = uᵀ S̃ v`, and the
AIP cosine is the Euclidean cosine after whitening with `W = S̃^{1/2}` (the symmetric square root,
so `‖W u‖ = ‖u‖_S`).

Numerics: the moment is accumulated in float64 from float16/32 batches; `S` and `W` come from one
float64 eigendecomposition. `inner`, `norm`, `cosine` and `cosine_matrix` compute in float64 and
return float64 (they are the reference). The large blockwise kernels in `atomslib.criteria` whiten
and normalise in float64, then form cosine blocks in float32 by default (absolute error ≲ 1e-6);
pass `dtype=torch.float64` there for exactness.

Centring control (spec §2): `AIP.fit(..., center=True)` inverts the *covariance* instead of the
uncentred moment (the inner product of directions is unchanged in form: nothing is subtracted from
the vectors you pass). To measure the rival explanation "centring alone", compare the Euclidean
angles of the centred activations: `centered_cosine_matrix(X, mean=aip.mean)`.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ._util import atomic_save_safetensors, check_acts, iter_batches, torch_threads

Tensor = torch.Tensor
_FORMAT = "atoms.aip"
_VERSION = 1
_CHUNK = 8192  # rows upcast to float64 at a time: bounds the temporary to ~_CHUNK*H*8 bytes


class MomentAccumulator:
    """Streaming uncentred second moment Σ m mᵀ (float64), with the count and running sum.

    Used by `AIP.fit` and by the activation harvest (one accumulator per layer), which can
    checkpoint it with `state_dict()` and resume with `load_state_dict()`. Batches may be
    float16/bfloat16/float32/float64 on any device; they are upcast to float64 in row chunks.
    """

    def __init__(self, H: int, *, device: str | torch.device = "cpu"):
        if isinstance(H, bool) or not isinstance(H, int) or H <= 0:
            raise ValueError(f"H must be a positive int (the activation width), got {H!r}")
        self.H = H
        self.device = torch.device(device)
        self._sum_HH = torch.zeros(H, H, dtype=torch.float64, device=self.device)
        self._sum_H = torch.zeros(H, dtype=torch.float64, device=self.device)
        self.n = 0
        self.n_excluded = 0

    def update(self, batch_BH: Tensor, outlier_ratio: float | None = None) -> int:
        """Add the rows of `batch_BH` (b, H); return how many were used.

        With `outlier_ratio`, rows whose norm exceeds `outlier_ratio` x the batch's median row
        norm are left out and counted in `n_excluded` (massive-activation tokens would otherwise
        dominate the moment). A batch whose median norm is 0 excludes nothing.
        """
        x = check_acts(batch_BH, "batch_BH", self.H, allow_empty=True)
        if x.shape[0] == 0:
            return 0
        x = x.detach().to(self.device)
        if outlier_ratio is not None:
            if not (isinstance(outlier_ratio, (int, float)) and math.isfinite(outlier_ratio) and outlier_ratio > 0):
                raise ValueError(f"outlier_ratio must be a positive number (e.g. 50) or None, got {outlier_ratio!r}")
            norms = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64)
            med = float(norms.median())
            if med > 0:
                keep = norms <= outlier_ratio * med
                n_out = int((~keep).sum())
                if n_out:
                    x = x[keep]
                    self.n_excluded += n_out
        for i in range(0, x.shape[0], _CHUNK):
            c = x[i:i + _CHUNK].to(torch.float64)
            self._sum_HH.addmm_(c.T, c)
            self._sum_H += c.sum(0)
        self.n += x.shape[0]
        return x.shape[0]

    def _need_rows(self) -> None:
        if self.n == 0:
            raise ValueError("the MomentAccumulator has no rows yet (n = 0); call update(batch_BH) first")

    def moment(self) -> Tensor:
        """E[m mᵀ] (H, H) float64, exactly symmetric."""
        self._need_rows()
        M = self._sum_HH / self.n
        return (M + M.T) / 2

    def mean(self) -> Tensor:
        """E[m] (H,) float64."""
        self._need_rows()
        return self._sum_H / self.n

    def covariance(self) -> Tensor:
        """E[(m − E m)(m − E m)ᵀ] (H, H) float64 (population normalisation, 1/n)."""
        mu = self.mean()
        return self.moment() - torch.outer(mu, mu)

    def merge(self, other: "MomentAccumulator") -> "MomentAccumulator":
        """Add another accumulator of the same width (e.g. from a parallel shard) into this one."""
        if not isinstance(other, MomentAccumulator) or other.H != self.H:
            raise ValueError(f"other must be a MomentAccumulator with H = {self.H}")
        self._sum_HH += other._sum_HH.to(self.device)
        self._sum_H += other._sum_H.to(self.device)
        self.n += other.n
        self.n_excluded += other.n_excluded
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors only (CPU), so it can go straight into `atomic_save_safetensors`."""
        return {"sum_HH": self._sum_HH.cpu().clone(), "sum_H": self._sum_H.cpu().clone(),
                "n": torch.tensor([self.n], dtype=torch.int64),
                "n_excluded": torch.tensor([self.n_excluded], dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, Any]) -> "MomentAccumulator":
        missing = {"sum_HH", "sum_H", "n", "n_excluded"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}; pass the dict from MomentAccumulator.state_dict()")
        S, s = torch.as_tensor(state["sum_HH"]), torch.as_tensor(state["sum_H"])
        if S.shape != (self.H, self.H) or s.shape != (self.H,):
            raise ValueError(f"state has sum_HH {tuple(S.shape)} / sum_H {tuple(s.shape)} but this accumulator "
                             f"has H = {self.H}; create it with MomentAccumulator({S.shape[-1]})")
        n, ne = int(torch.as_tensor(state["n"]).reshape(-1)[0]), int(torch.as_tensor(state["n_excluded"]).reshape(-1)[0])
        if n < 0 or ne < 0 or not bool(torch.isfinite(S).all() and torch.isfinite(s).all()):
            raise ValueError("state is corrupt (negative counts or non-finite sums); re-harvest the moment")
        self._sum_HH = S.to(self.device, torch.float64).clone()
        self._sum_H = s.to(self.device, torch.float64).clone()
        self.n, self.n_excluded = n, ne
        return self

    def to_aip(self, ridge: float = 0.0, *, center: bool = False) -> "AIP":
        """The AIP of what has been accumulated (`center=True`: invert the covariance instead)."""
        M = self.covariance() if center else self.moment()
        return AIP.from_moment(M, n=self.n, ridge=ridge, n_excluded=self.n_excluded, mean=self.mean(), centered=center)

    def __repr__(self) -> str:
        return f"MomentAccumulator(H={self.H}, n={self.n}, n_excluded={self.n_excluded})"


class AIP:
    """An inner product ⟨u, v⟩_S = uᵀ S̃ v on R^H, with S̃ = (moment + relative ridge)⁻¹.

    Build it with `AIP.fit(acts)`, `AIP.from_moment(M)`, `AIP.identity(H)` (Euclidean geometry
    through the same interface) or `AIP.load(path)`. All vector arguments are `(..., H)` tensors.
    """

    def __init__(self, moment: Tensor, *, n_tokens: int | None = None, n_excluded: int = 0, ridge: float = 0.0,
                 mean: Tensor | None = None, centered: bool = False, kind: str = "moment"):
        M = _square_f64(moment, "moment")
        H = M.shape[0]
        if not (isinstance(ridge, (int, float)) and math.isfinite(ridge) and ridge >= 0):
            raise ValueError(f"ridge must be a finite number >= 0 (relative to the mean eigenvalue), got {ridge!r}")
        tr = float(torch.trace(M))
        if not tr > 0:
            raise ValueError(f"moment has trace {tr:g} (all activations zero?); an AIP needs a positive definite moment")
        M_reg = M + (ridge * tr / H) * torch.eye(H, dtype=torch.float64) if ridge > 0 else M
        # One thread: LAPACK's eigh of an (H, H) moment gains nothing from threads at these sizes, and with
        # 2 threads on a loaded machine it took 15 s instead of 0.07 s single-threaded (H = 576).
        with torch_threads(1):
            evals, evecs = torch.linalg.eigh(M_reg)
        tol = float(evals[-1]) * H * torch.finfo(torch.float64).eps
        if float(evals[0]) <= tol:
            rank = int((evals > tol).sum())
            cond = float(evals[-1] / evals[0]) if float(evals[0]) > 0 else math.inf
            zero = torch.nonzero(torch.diagonal(M) == 0).flatten().tolist()
            dims = f"; dimensions {zero[:10]} are identically zero" if zero else ""
            ntok = f" from {n_tokens} tokens" if n_tokens is not None else ""
            raise ValueError(
                f"the second-moment matrix{ntok} is not positive definite: rank {rank} of H = {H}, "
                f"condition number {cond:.3g}{dims}. Fit on more tokens (at least H = {H}, ideally >> H) "
                f"or pass ridge=1e-6 (adds 1e-6 * tr(M)/H * I)")
        self._M = M
        self._evals = evals
        self._S = (evecs / evals) @ evecs.T
        self._S = (self._S + self._S.T) / 2
        self._W = (evecs * evals.rsqrt()) @ evecs.T
        self._W = (self._W + self._W.T) / 2
        self._W_cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        self.H = H
        self.n_tokens = None if n_tokens is None else int(n_tokens)
        self.n_excluded = int(n_excluded)
        self.ridge = float(ridge)
        self.mean = None if mean is None else _vec_f64(mean, "mean", H)
        self.centered = bool(centered)
        self.kind = kind

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def fit(cls, acts: Tensor | Iterable[Tensor], *, ridge: float = 0.0, outlier_ratio: float | None = None,
            batch_size: int = 65536, center: bool = False) -> "AIP":
        """Estimate S̃ = (E[m mᵀ])⁻¹ from `acts` ((n, H) tensor or iterable of (b, H) batches), streaming."""
        acc = None
        for b in iter_batches(acts, batch_size, name="acts"):
            if acc is None:
                acc = MomentAccumulator(b.shape[1])
            acc.update(b, outlier_ratio=outlier_ratio)
        if acc is None:
            raise ValueError("acts yielded no rows; pass at least H activation vectors (ideally many more)")
        if acc.n == 0:
            raise ValueError(f"all {acc.n_excluded} rows were excluded as outliers; raise outlier_ratio or pass None")
        return acc.to_aip(ridge=ridge, center=center)

    @classmethod
    def from_moment(cls, M: Tensor, *, n: int | None = None, ridge: float = 0.0, n_excluded: int = 0,
                    mean: Tensor | None = None, centered: bool = False) -> "AIP":
        """The AIP S̃ = (M + ridge·tr(M)/H·I)⁻¹ of a given (H, H) second moment (or any SPD matrix ∝ D Dᵀ)."""
        return cls(M, n_tokens=n, n_excluded=n_excluded, ridge=ridge, mean=mean, centered=centered)

    @classmethod
    def identity(cls, H: int) -> "AIP":
        """The Euclidean inner product (S̃ = I) behind the AIP interface."""
        if isinstance(H, bool) or not isinstance(H, int) or H <= 0:
            raise ValueError(f"H must be a positive int, got {H!r}")
        return cls(torch.eye(H, dtype=torch.float64), kind="identity")

    # ---- properties ---------------------------------------------------------------------
    @property
    def S(self) -> Tensor:
        """S̃ (H, H) float64 (do not modify in place)."""
        return self._S

    @property
    def W(self) -> Tensor:
        """Whitening matrix S̃^{1/2} (H, H) float64, symmetric: ‖W u‖ = ‖u‖_S, W W = S̃."""
        return self._W

    @property
    def moment(self) -> Tensor:
        """The moment the AIP was built from (before the ridge), float64."""
        return self._M

    @property
    def eigenvalues(self) -> Tensor:
        """Eigenvalues of the regularised moment, ascending."""
        return self._evals

    @property
    def condition_number(self) -> float:
        """λ_max / λ_min of the (regularised) moment: how much the AIP stretches some directions."""
        return float(self._evals[-1] / self._evals[0])

    def _W_as(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        key = (dtype, device)
        if key not in self._W_cache:
            self._W_cache[key] = self._W.to(device=device, dtype=dtype)
        return self._W_cache[key]

    def about_mean(self) -> "AIP":
        """The AIP of the covariance E[(m − E m)(m − E m)ᵀ] = moment − mean meanᵀ, with the same relative
        ridge (self when already centred). Needs the mean (an AIP from `fit`, a `MomentAccumulator` or `load`)."""
        if self.centered:
            return self
        if self.mean is None:
            raise ValueError("this AIP has no mean, so its covariance is unknown; build it with AIP.fit(acts), "
                             "MomentAccumulator.to_aip() or ActivationCache(dir).aip(layer), which keep the mean")
        return AIP(self._M - torch.outer(self.mean, self.mean), n_tokens=self.n_tokens, n_excluded=self.n_excluded,
                   ridge=self.ridge, mean=self.mean, centered=True, kind=self.kind)

    # ---- geometry -----------------------------------------------------------------------
    def whiten(self, x: Tensor) -> Tensor:
        """x @ W, in x's dtype: Euclidean geometry of the result is the AIP geometry of x."""
        x = _check_vecs(x, "x", self.H)
        return x @ self._W_as(x.dtype, x.device)

    def inner(self, u: Tensor, v: Tensor) -> Tensor:
        """⟨u, v⟩_S = uᵀ S̃ v row-wise (broadcasting over leading dims), float64."""
        u = _check_vecs(u, "u", self.H).to(torch.float64)
        v = _check_vecs(v, "v", self.H).to(torch.float64)
        return ((u @ self._S.to(u.device)) * v.to(u.device)).sum(-1)

    def norm(self, u: Tensor) -> Tensor:
        """‖u‖_S = √(uᵀ S̃ u), float64."""
        u = _check_vecs(u, "u", self.H).to(torch.float64)
        return torch.linalg.vector_norm(u @ self._W.to(u.device), dim=-1)

    def cosine(self, u: Tensor, v: Tensor) -> Tensor:
        """cos_S(u, v) row-wise (broadcasting), float64 in [-1, 1]. Zero vectors are an error."""
        uw = _unit(self.whiten(_check_vecs(u, "u", self.H).to(torch.float64)), "u")
        vw = _unit(self.whiten(_check_vecs(v, "v", self.H).to(torch.float64)), "v")
        return (uw * vw.to(uw.device)).sum(-1).clamp(-1.0, 1.0)

    def cosine_matrix(self, X: Tensor, Y: Tensor | None = None) -> Tensor:
        """Pairwise cos_S between rows of X (n, H) and Y (m, H) (default Y = X): (n, m) float64."""
        Xw = _unit(self.whiten(check_acts(X, "X", self.H).to(torch.float64)), "X")
        Yw = Xw if Y is None else _unit(self.whiten(check_acts(Y, "Y", self.H).to(torch.float64)), "Y")
        return (Xw @ Yw.to(Xw.device).T).clamp(-1.0, 1.0)

    # ---- persistence --------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write one safetensors file (moment, mean) with JSON metadata and a checksum; atomic."""
        path = _aip_path(path)
        tensors = {"moment": self._M.contiguous()}
        if self.mean is not None:
            tensors["mean"] = self.mean.contiguous()
        meta = {"format": _FORMAT, "version": _VERSION, "H": self.H, "ridge": self.ridge, "n_tokens": self.n_tokens,
                "n_excluded": self.n_excluded, "centered": self.centered, "kind": self.kind,
                "condition_number": self.condition_number, "sha256": _digest(tensors)}
        atomic_save_safetensors(path, tensors, metadata={"atoms_aip": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "AIP":
        """Read a file written by `save`, validating format, shapes and checksum."""
        path = _aip_path(path)
        if not path.is_file():
            raise FileNotFoundError(f"AIP file {path} does not exist; create it with AIP.fit(acts).save({str(path)!r})")
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["atoms_aip"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises several types for truncated/garbled files
            raise ValueError(f"{path} is not a readable AIP file (corrupt, truncated or not written by AIP.save): "
                             f"{type(e).__name__}: {e}. Re-create it with AIP.fit(acts).save(path)") from e
        if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
            raise ValueError(f"{path} has format {meta.get('format')!r} v{meta.get('version')}, expected {_FORMAT!r} v{_VERSION}")
        if "moment" not in tensors or tuple(tensors["moment"].shape) != (meta["H"], meta["H"]):
            raise ValueError(f"{path} is corrupt: no (H, H) moment tensor for H = {meta.get('H')}")
        if _digest(tensors) != meta.get("sha256"):
            raise ValueError(f"{path} is corrupt: checksum mismatch; re-create it with AIP.fit(acts).save(path)")
        return cls(tensors["moment"], n_tokens=meta["n_tokens"], n_excluded=meta["n_excluded"], ridge=meta["ridge"],
                   mean=tensors.get("mean"), centered=meta["centered"], kind=meta["kind"])

    def __repr__(self) -> str:
        return (f"AIP(H={self.H}, kind={self.kind!r}, n_tokens={self.n_tokens}, n_excluded={self.n_excluded}, "
                f"ridge={self.ridge:g}, centered={self.centered}, condition_number={self.condition_number:.3g})")


def centered_cosine_matrix(X: Tensor, Y: Tensor | None = None, *, mean: Tensor) -> Tensor:
    """Euclidean cosines of X − mean and Y − mean (spec §2's "centring alone" control), float64.

    `mean` is an (H,) vector, typically `AIP.mean` of an AIP fitted on *other* (reference) tokens.
    """
    X = check_acts(X, "X").to(torch.float64)
    mu = _vec_f64(mean, "mean", X.shape[1]).to(X.device)
    Xc = _unit(X - mu, "X - mean")
    Yc = Xc if Y is None else _unit(check_acts(Y, "Y", X.shape[1]).to(torch.float64).to(X.device) - mu, "Y - mean")
    return (Xc @ Yc.T).clamp(-1.0, 1.0)


# ---- helpers ------------------------------------------------------------------------------
def _square_f64(M: Any, name: str) -> Tensor:
    M = torch.as_tensor(M)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square (H, H) matrix, got shape {tuple(M.shape)}")
    M = M.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(M).all()):
        raise ValueError(f"{name} contains NaN or inf; re-accumulate it from finite activations")
    scale = float(M.abs().max())
    if float((M - M.T).abs().max()) > 1e-8 * max(scale, 1e-300):
        raise ValueError(f"{name} must be symmetric (a second moment or D Dᵀ); symmetrise with ({name} + {name}.T) / 2")
    return (M + M.T) / 2


def _vec_f64(v: Any, name: str, H: int) -> Tensor:
    v = torch.as_tensor(v)
    if v.shape != (H,) or not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} must be a finite ({H},) vector, got shape {tuple(v.shape)}")
    return v.detach().to("cpu", torch.float64)


def _check_vecs(x: Any, name: str, H: int) -> Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (..., {H}), got {type(x).__name__}")
    if x.ndim == 0 or x.shape[-1] != H:
        raise ValueError(f"{name} must have last dimension H = {H} (the AIP's width), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}; convert with {name}.float()")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf; drop or repair those rows first")
    return x


def _unit(x: Tensor, name: str) -> Tensor:
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    if bool((n == 0).any()):
        rows = torch.nonzero(n.reshape(-1) == 0).flatten().tolist()
        raise ValueError(f"{name} has zero vectors (rows {rows[:10]}{'...' if len(rows) > 10 else ''}); "
                         f"a cosine needs nonzero vectors, drop them first")
    return x / n


def _digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].to(torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()


def _aip_path(path: str | Path) -> Path:
    p = Path(path)
    return p / "aip.safetensors" if p.is_dir() else p
