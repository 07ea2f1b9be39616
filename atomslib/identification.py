"""Identification where the truth is known: does a *trained* SAE find the atoms that made the data?

The theory chapter checks the TSAE theorem with an encoder *built* from the true atoms
(W_enc = D S̃). Here the units are *trained* on activations m = δ D made from planted atoms D
(:func:`atomslib.theory.synthetic_atoms`) and compared with the truth:

- **MCC**: mean |cos| between true atoms and learned units after the one-to-one Hungarian
  matching (``sae_lens.synthetic.mean_correlation_coefficient``, the measure of arXiv 2505.20254);
- **share recovered**: true atoms whose best learned unit has cos > 0.95 (and > 0.99);
- **support recovery**: per token, the learned units that fire, mapped to atoms through the
  matching, against the true support (pooled precision and recall; an unmatched unit that fires
  is a false positive);
- **held-out R²** and mean **L0** (to set beside the true K);
- the theorem's prediction for the cell (:func:`theorem_prediction`);
- the training objective of a trained model beside that of the theorem's encoder built from the
  truth (:func:`sae_objective`, :func:`truth_tsae`): whether a failure is the optimiser's or the
  objective's.

Everything takes the learned units as a :class:`atomslib.tsae.TSAE` (atomslib's, or SAELens's
converted exactly by ``atomslib.interop_saelens``), so every kind of unit is scored by one code path.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch

from .planted_codes import CodeFamily, code_family, with_noise
from .recovery import tsae_threshold_interval
from .theory import SyntheticAtoms, synthetic_atoms, uniqueness_bound, welch_bound

if TYPE_CHECKING:
    from .tsae import TSAE

Tensor = torch.Tensor

RECOVERY_LEVELS = (0.95, 0.99)
"""Cosines at which a true atom counts as recovered by its best learned unit."""


class IdentificationBar(NamedTuple):
    """When a training counts as *identifying* the planted atoms (issue 10's bar, the one place it is set).

    All three must hold: the dictionary matches the truth, nearly every atom has its own unit, and the
    codes are as sparse as the truth (a dictionary that matches but fires many units per token has not
    found the generative model)."""

    mcc: float = 0.98
    """lowest MCC (mean |cos| after Hungarian matching)"""
    recovered_95: float = 0.95
    """lowest share of true atoms whose best learned unit has cos > 0.95"""
    l0_rel_tol: float = 0.2
    """largest |L0 − K| / K of the mean held-out L0 against the true K"""

    def failures(self, scores: "Identification", K: int) -> list[str]:
        """What keeps `scores` from identifying (empty when it identifies), in words."""
        out = []
        if not scores.mcc >= self.mcc:
            out.append(f"MCC {scores.mcc:.3f} < {self.mcc}")
        if not scores.recovered_95 >= self.recovered_95:
            out.append(f"recovered at cos > 0.95 {scores.recovered_95:.0%} < {self.recovered_95:.0%}")
        if not abs(scores.l0 - K) <= self.l0_rel_tol * K:
            out.append(f"L0 {scores.l0:.2f} not within {self.l0_rel_tol:.0%} of K = {K}")
        return out

    def identifies(self, scores: "Identification", K: int) -> bool:
        return not self.failures(scores, K)


IDENTIFICATION_BAR = IdentificationBar()
"""The bar the book, the benchmark (bench/planted.py) and the tests apply."""


class PlantedSplit(NamedTuple):
    """A planted problem: the truth, training activations and held-out activations with their codes."""

    atoms: SyntheticAtoms
    """The truth (D, its coherence, K, the coefficient range, the AIP of the truth)."""
    train: Tensor
    """(n_train, H) float32 activations to train on (the data scale |M| is n_train)."""
    heldout: Tensor
    """(n_heldout, H) float32 activations never trained on."""
    heldout_codes: Tensor
    """(n_heldout, N) float64 true codes of the held-out rows."""


def planted_seed(seed: int) -> int:
    """The generator seed of the planted atoms of problem ``seed``: a 63-bit hash of it, so that it
    never equals the small seed an SAE is initialised with (see :func:`planted_problem`)."""
    import hashlib

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r}: must be an integer")
    digest = hashlib.blake2b(f"atomslib.identification.planted:{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def planted_problem(H: int, N: int, K: int, *, n_train: int, n_heldout: int = 5000, eps: float | None = None,
                    delta_range: tuple[float, float] = (1.0, 2.0), nonneg: bool = True, seed: int = 0,
                    codes: "str | CodeFamily" = "exact", noise: float | None = None) -> PlantedSplit:
    """Planted atoms (N, H) with K active per token (exactly, by default) and a train / held-out split.

    codes: the code family, a name of ``atomslib.planted_codes.CODE_FAMILIES`` or a
    :class:`atomslib.planted_codes.CodeFamily`: "exact" (the default, every problem's draw before the
    families existed, unchanged), "bernoulli" (variable supports), "lognormal" (heavy-tailed
    magnitudes), "powerlaw" (power-law atom frequencies), "noisy", "realistic" (all together). K is
    the *mean* number of active atoms per token (exactly K for the exact-support families).
    noise: None keeps the family's own additive noise; a number replaces it (the noise's RMS norm
    relative to the noise-free activations'). The held-out codes are the noise-free truth.

    eps: the coherence of the atoms (None: i.i.d. Gaussian directions when N > H, orthonormal when
    N <= H); see :func:`atomslib.theory.synthetic_atoms`, which also checks K <= N and the Welch bound.
    The held-out rows come from the same distribution but are never trained on.

    seed: the problem's seed. The atoms are drawn from a generator seeded by a hash of it
    (:func:`planted_seed`), not by ``seed`` itself: ``synthetic_atoms(seed=s)`` and an SAE
    initialised with ``TSAEConfig(seed=s)`` both draw ``randn(N, H)`` from ``Generator(s)``, so
    with the same small seed an SAE would *start at the true atoms* (Gaussian atoms, N > H) and
    "recover" them without learning anything.
    """
    for name, v in (("n_train", n_train), ("n_heldout", n_heldout)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r}: the data scale must be a positive number of tokens "
                             f"(e.g. {name}=20000)")
    if isinstance(K, int) and isinstance(N, int) and K > N:
        raise ValueError(f"K={K} exceeds the number of atoms N={N}: a token cannot have more active atoms than "
                         f"there are; pick K <= N")
    if eps is not None and isinstance(N, int) and isinstance(H, int) and H > 0 and eps < welch_bound(N, H):
        raise ValueError(f"eps={eps:g} is below the Welch bound {welch_bound(N, H):.4g} of N={N} atoms in H={H} "
                         f"dimensions: no such atom set exists; raise eps or H, or lower N")
    family = code_family(codes) if noise is None else with_noise(codes, noise)
    s = synthetic_atoms(H, N, eps=eps, K=K, n_samples=n_train + n_heldout, delta_range=delta_range,
                        seed=planted_seed(seed), nonneg=nonneg, codes=family)
    acts = s.acts.float()
    return PlantedSplit(s, acts[:n_train].contiguous(), acts[n_train:].contiguous(), s.codes[n_train:])


def _unit_rows(D: Tensor) -> Tensor:
    D = D.detach().double().cpu()
    return D / D.norm(dim=1, keepdim=True).clamp_min(1e-12)


def abs_cosines(true_D: Tensor, learned_D: Tensor) -> Tensor:
    """(N_true, N_learned) |cos| between true atoms and learned units (rows)."""
    return (_unit_rows(true_D) @ _unit_rows(learned_D).T).abs()


def hungarian_match(true_D: Tensor, learned_D: Tensor) -> tuple[Tensor, Tensor]:
    """One-to-one matching maximising the summed |cos| (the matching behind the MCC).

    Returns (true_index, learned_index), each of length min(N_true, N_learned)."""
    from scipy.optimize import linear_sum_assignment

    cos = abs_cosines(true_D, learned_D).numpy()
    r, c = linear_sum_assignment(1.0 - cos)
    return torch.as_tensor(r), torch.as_tensor(c)


def mcc(true_D: Tensor, learned_D: Tensor) -> float:
    """Mean correlation coefficient (SAELens's implementation: Hungarian matching, mean |cos|)."""
    from sae_lens.synthetic import mean_correlation_coefficient

    return float(mean_correlation_coefficient(true_D.detach().double().cpu(), learned_D.detach().double().cpu()))


def cross_seed_mcc(dictionaries: list[Tensor]) -> tuple[float, float]:
    """(mean, min) MCC over all pairs of dictionaries: whether different seeds find the same units
    (the feature consistency of arXiv 2505.20254). Needs at least two dictionaries."""
    if len(dictionaries) < 2:
        raise ValueError(f"cross_seed_mcc needs at least 2 dictionaries (seeds), got {len(dictionaries)}")
    vals = [mcc(a, b) for i, a in enumerate(dictionaries) for b in dictionaries[i + 1:]]
    return sum(vals) / len(vals), min(vals)


class SupportRecovery(NamedTuple):
    precision: float
    """Of the learned units that fired, the share that are matched to a true atom of the token's support."""
    recall: float
    """Of the true atoms of each token, the share whose matched unit fired."""
    exact: float
    """Share of tokens whose mapped support equals the true support exactly."""


@torch.no_grad()
def support_recovery(codes: Tensor, true_codes: Tensor, learned_to_true: Tensor, *, tol: float = 0.0) -> SupportRecovery:
    """Pooled precision and recall of the supports, through a unit -> atom map.

    codes: (n, N_learned) learned codes; true_codes: (n, N_true); learned_to_true: (N_learned,)
    int64, the atom each learned unit is matched to, or -1 when unmatched (it then counts as a
    false positive whenever it fires)."""
    if codes.shape[0] != true_codes.shape[0]:
        raise ValueError(f"codes have {codes.shape[0]} rows but true_codes {true_codes.shape[0]}")
    n, Nt = true_codes.shape
    fired = codes.abs() > tol                                          # (n, N_learned)
    truth = true_codes != 0                                            # (n, N_true)
    m = learned_to_true.to(torch.int64)
    matched = m >= 0
    # mapped[i, a]: some unit matched to atom a fired on token i
    mapped = torch.zeros(n, Nt, dtype=torch.bool)
    if bool(matched.any()):
        cols = matched.nonzero().squeeze(1)
        mapped.index_put_((torch.arange(n)[:, None].expand(n, cols.numel()), m[cols].expand(n, -1)),
                          fired[:, cols], accumulate=True)
    tp = (mapped & truth).sum()
    n_fired = fired.sum()
    prec = float(tp) / float(n_fired) if int(n_fired) else float("nan")
    rec = float(tp) / float(truth.sum()) if int(truth.sum()) else float("nan")
    # exact: every true atom's unit fired and no other unit fired
    hit = (mapped & truth).sum(1)
    exact = float(((hit == truth.sum(1)) & (fired.sum(1) == hit)).double().mean())
    return SupportRecovery(prec, rec, exact)


class Identification(NamedTuple):
    """How well a trained dictionary identifies planted atoms (see the module docstring)."""

    mcc: float
    recovered_95: float
    recovered_99: float
    support_precision: float
    support_recall: float
    support_exact: float
    l0: float
    """mean active units per held-out token (to set beside the true K)"""
    r2: float
    """held-out R² (euclid: pooled, per-dimension mean)"""
    dead_fraction: float
    """share of learned units that never fire on the held-out tokens"""

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self._asdict().items()}


@torch.no_grad()
def identification_scores(problem: PlantedSplit, units, *, batch_size: int = 8192) -> Identification:
    """Score trained units (a :class:`atomslib.tsae.TSAE`) against the planted truth, on held-out rows."""
    D_true = problem.atoms.D
    D_learned = units.dictionary()
    cos = abs_cosines(D_true, D_learned)
    best = cos.max(1).values
    r, c = hungarian_match(D_true, D_learned)
    # A matched pair counts for support recovery only if it is a real match (cos > 0.5): a unit
    # paired with an atom it does not resemble is no identification of it.
    learned_to_true = torch.full((D_learned.shape[0],), -1, dtype=torch.int64)
    ok = cos[r, c] > 0.5
    learned_to_true[c[ok]] = r[ok]
    X = problem.heldout
    codes, sse = [], 0.0
    for i in range(0, X.shape[0], batch_size):
        out = units(X[i:i + batch_size])
        codes.append(out.codes.detach().cpu())
        sse += float((out.m_hat.double().cpu() - X[i:i + batch_size].double()).pow(2).sum())
    codes = torch.cat(codes)
    X64 = X.double()
    sst = float((X64 - X64.mean(0)).pow(2).sum())
    sup = support_recovery(codes, problem.heldout_codes, learned_to_true)
    return Identification(
        mcc=mcc(D_true, D_learned),
        recovered_95=float((best > RECOVERY_LEVELS[0]).double().mean()),
        recovered_99=float((best > RECOVERY_LEVELS[1]).double().mean()),
        support_precision=sup.precision, support_recall=sup.recall, support_exact=sup.exact,
        l0=float((codes != 0).sum(1).double().mean()),
        r2=1.0 - sse / sst if sst > 0 else float("nan"),
        dead_fraction=float(((codes != 0).sum(0) == 0).double().mean()))


def train_atom_counts(problem: PlantedSplit) -> Tensor:
    """(N,) int64: in how many training tokens each true atom is active (the rarest atom's count is what
    a power-law family risks making too small to learn)."""
    n_train = problem.train.shape[0]
    return (problem.atoms.codes[:n_train] != 0).sum(0)


class FrequencyBand(NamedTuple):
    """The recovery of the atoms of one frequency band (atoms sorted by their training count)."""

    band: str
    """its name: "common", "middle", "rare" for three bands, else "band i of n" (most frequent first)"""
    min_count: int
    """fewest training tokens any atom of the band is active in"""
    max_count: int
    """most training tokens any atom of the band is active in"""
    n_atoms: int
    recovered_95: float
    """share of the band's atoms whose best learned unit has cos > 0.95"""


@torch.no_grad()
def recovery_by_frequency(problem: PlantedSplit, units, *, n_bands: int = 3) -> list[FrequencyBand]:
    """The share of atoms recovered at cos > 0.95 in ``n_bands`` bands of (nearly) equal size, from the
    most to the least frequent atoms in the training split: whether rare atoms are the ones lost."""
    N = problem.atoms.D.shape[0]
    if isinstance(n_bands, bool) or not isinstance(n_bands, int) or not 1 <= n_bands <= N:
        raise ValueError(f"n_bands={n_bands!r}: must be an int from 1 to the number of atoms N = {N}")
    best = abs_cosines(problem.atoms.D, units.dictionary()).max(1).values
    counts = train_atom_counts(problem)
    order = torch.argsort(counts, descending=True, stable=True)
    names = ("common", "middle", "rare") if n_bands == 3 else tuple(f"band {i + 1} of {n_bands}" for i in range(n_bands))
    out = []
    for name, idx in zip(names, torch.tensor_split(order, n_bands)):
        out.append(FrequencyBand(name, int(counts[idx].min()), int(counts[idx].max()), int(idx.numel()),
                                 float((best[idx] > RECOVERY_LEVELS[0]).double().mean())))
    return out


class TheoremPrediction(NamedTuple):
    """What the theory says about a planted cell, from the truth alone."""

    mu: float
    """coherence of the true atoms under the AIP of the truth (Euclidean when N <= H: then 0 or eps)"""
    mu_euclid: float
    """Euclidean coherence of the true atoms"""
    unique_below: float
    """codes with fewer than (1 + 1/mu)/2 nonzeros are the unique sparsest ones"""
    threshold_interval: tuple[float, float] | None
    """the TSAE theorem's interval for tau (None: empty, the sufficient condition fails)"""
    holds: bool
    """delta_min > mu (2K - 1) delta_max: a threshold encoder built from the truth provably recovers
    every support (a sufficient condition, not a necessary one)"""


def theorem_prediction(atoms: SyntheticAtoms) -> TheoremPrediction:
    """The TSAE theorem's hypothesis for a planted atom set (under the AIP of the truth).

    The theorem needs unit atoms in its geometry. Under the true AIP S̃ the atoms of an over-complete set
    (N > H) have norms ν_a = ‖d_a‖_S̃ ≠ 1, so the atoms are d_a / ν_a and the codes x_a ν_a, whose
    coefficients lie in [x_min · min ν, x_max · max ν] (:func:`atomslib.recovery.theorem_tsae`): that is
    the range the interval is computed for. When N <= H every ν_a is 1 and the range is the codes' own."""
    lo, hi = atoms.delta_range
    nu = atoms.aip.norm(atoms.D)
    lo, hi = lo * float(nu.min()), hi * float(nu.max())
    mu = float(atoms.coherence_aip)
    iv = tsae_threshold_interval(mu, atoms.K, lo, hi)
    return TheoremPrediction(mu, float(atoms.coherence), uniqueness_bound(min(max(mu, 0.0), 1.0)), iv, iv is not None)


def truth_tsae(D: Tensor, threshold: float, *, aip=None) -> "TSAE":
    """The theorem's encoder built from the truth, as a :class:`atomslib.tsae.TSAE` (float64).

    W_enc = D S̃ (rows; S̃ = I when ``aip`` is None, the Euclidean geometry), W_dec = D, zero biases
    and one threshold for every unit. Rows of D must have unit norm under the geometry
    (:func:`atomslib.recovery.theorem_tsae` checks). Scored like any trained dictionary, it says what
    the truth itself achieves under the TSAE's encoder, e.g. its value of the training objective
    (:func:`sae_objective`)."""
    from .recovery import theorem_tsae

    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold)
            and threshold >= 0):
        raise ValueError(f"threshold={threshold!r}: must be a finite number >= 0 (in the units of the codes)")
    units = theorem_tsae(D, aip, float(threshold)).to_tsae()   # W_enc = D S̃, W_dec = D, zero biases
    units.fit_info["built_from"] = "truth"
    return units


def trainer_scale(X: Tensor) -> float:
    """The scale s the trainer's defaults normalise rows ``X`` by (``TSAEConfig.normalize``'s default,
    ``atomslib.input_map.input_scale``): the space its L0 coefficient is stated in."""
    from .input_map import input_scale
    from .tsae import TSAEConfig

    return input_scale(X.detach().double().cpu(), TSAEConfig.field_default("normalize"))


@torch.no_grad()
def sae_objective(units, X: Tensor, *, l0_coeff: float, scale: float | None = None,
                  batch_size: int = 8192) -> float:
    """Mean per-token value of the threshold SAE's training objective on rows ``X``:
    ||s·(m − m̂)||²/H + l0_coeff·L0, in the trainer's normalised space (:func:`trainer_scale`, the
    default ``TSAEConfig.normalize``'s s, estimated on ``X`` unless ``scale`` is given; pass the
    training rows' scale to compare several models on the same footing). Lower is better for the trainer:
    comparing a trained model with :func:`truth_tsae` tells whether training stopped at a worse
    point than the truth (an optimisation failure) or the objective itself prefers another
    solution."""
    if not (isinstance(l0_coeff, (int, float)) and not isinstance(l0_coeff, bool) and math.isfinite(l0_coeff)
            and l0_coeff >= 0):
        raise ValueError(f"l0_coeff={l0_coeff!r}: must be a finite number >= 0 (the trainer's default is 1/H)")
    X = X.detach().double().cpu()
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be a non-empty (n, H) tensor, got shape {tuple(X.shape)}")
    H = X.shape[1]
    if scale is None:
        scale = trainer_scale(X)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale={scale!r}: must be a finite number > 0 (all-zero rows cannot be normalised)")
    total = 0.0
    for i in range(0, X.shape[0], batch_size):
        x = X[i:i + batch_size]
        out = units(x.to(units.W_enc.dtype))
        err = (out.m_hat.double().cpu() - x).pow(2).sum(1) * scale ** 2 / H
        total += float((err + l0_coeff * (out.codes != 0).sum(1).double().cpu()).sum())
    return total / X.shape[0]
