"""How the codes of a planted problem are drawn: the code families (the one place that defines them).

A planted problem's activations are m = x D (+ noise) with codes x over N atoms (rows of D). The
families differ in how x is drawn; each is a :class:`CodeFamily` and has a name in
:data:`CODE_FAMILIES`:

- ``"exact"`` (the default, what every planted problem drew before the families existed, unchanged bit
  for bit): exactly K active atoms per token, a uniform random K-subset, magnitudes uniform in
  ``delta_range``;
- ``"bernoulli"``: each atom active independently with probability K/N, so the number of active atoms
  varies from token to token (Binomial(N, K/N), mean K; some tokens have none);
- ``"lognormal"``: exactly K active atoms, heavy-tailed magnitudes: log-normal with median the middle
  of ``delta_range`` (1.5 for today's (1, 2)) and log-standard-deviation ``lognormal_sigma`` (0.5);
- ``"powerlaw"``: exactly K active atoms per token, but atom a (0-based) is drawn with weight
  (a + 1)^-``zipf_exponent`` (1: Zipf's law), without replacement (successive sampling): the
  frequencies fall with the index like the weights, flattened at the top because a token holds an
  atom at most once;
- ``"noisy"``: the exact family plus additive Gaussian noise (``noise`` 0.2, see below);
- ``"realistic"``: all of it: Bernoulli supports whose probabilities follow the power law exactly
  (p_a proportional to (a + 1)^-1, summing to K, none above 1), log-normal magnitudes and noise 0.1.

**What K means.** K is always the *mean* number of active atoms per token: exactly K on every token
for the exact-support families (exact, lognormal, powerlaw, noisy), K on average for the Bernoulli
ones (bernoulli, realistic). The identification bar's |L0 − K| ≤ 0.2 K is stated against that mean.

**Noise.** ``noise`` is the ratio of the noise's RMS norm to the noise-free activations' RMS norm:
each coordinate gets i.i.d. N(0, σ²) with σ = noise · RMS‖m‖ / √H, the RMS over the problem's own
noise-free rows. The noise then carries a share noise²/(1 + noise²) of the activations' mean squared
norm (of their variance, which R² is measured against, more: nonnegative codes have a nonzero mean). The
true codes stay the noise-free ones, so support recovery is still scored against them.

**Rare atoms.** With power-law frequencies the rarest atom (index N − 1) is active with probability
about K (N−1)^-α / Σ_a (a+1)^-α; at α = 1 that is K / (N H_N) (H_N the harmonic number). On the
planted benchmark's problems (N ≤ 192, K ≥ 2) and 40,000 training tokens it is active in more than
:data:`MIN_ATOM_COUNT` training tokens (``tests/test_planted_codes.py`` checks the realised counts).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor

SUPPORTS = ("exact", "bernoulli")
MAGNITUDES = ("uniform", "lognormal")
FREQUENCIES = ("uniform", "powerlaw")

MIN_ATOM_COUNT = 100
"""Training tokens the rarest atom of a power-law family is active in, at least, on the planted
benchmark's problems (40,000 training tokens): below that an atom is too rare to learn in the budget."""


@dataclass(frozen=True)
class CodeFamily:
    """How a planted problem's codes are drawn (see the module docstring for the named families)."""

    name: str = "exact"
    """the family's name (a key of CODE_FAMILIES for the named ones)"""
    support: str = "exact"
    """"exact": exactly K active atoms per token; "bernoulli": each atom active independently, K on average"""
    magnitudes: str = "uniform"
    """"uniform": |x_a| uniform in delta_range; "lognormal": log-normal, median the middle of delta_range"""
    frequencies: str = "uniform"
    """"uniform": every atom equally often; "powerlaw": atom a with weight (a + 1)^-zipf_exponent"""
    lognormal_sigma: float = 0.5
    """standard deviation of log |x_a| for lognormal magnitudes"""
    zipf_exponent: float = 1.0
    """exponent α of the power-law frequencies (1: Zipf's law)"""
    noise: float = 0.0
    """RMS norm of the additive Gaussian noise relative to the noise-free activations' RMS norm (0: none)"""

    def __post_init__(self):
        for field, allowed in (("support", SUPPORTS), ("magnitudes", MAGNITUDES), ("frequencies", FREQUENCIES)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"CodeFamily {field}={getattr(self, field)!r}: pick one of {', '.join(allowed)}")
        for field in ("lognormal_sigma", "zipf_exponent", "noise"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"CodeFamily {field}={v!r}: must be a finite number >= 0")

    @property
    def is_exact_uniform(self) -> bool:
        """True when the codes are drawn exactly as before the families existed (the "exact" family's codes)."""
        return (self.support, self.magnitudes, self.frequencies) == ("exact", "uniform", "uniform")

    @property
    def variable_support(self) -> bool:
        """True when the number of active atoms varies from token to token (K is then its mean)."""
        return self.support == "bernoulli"


CODE_FAMILIES = {
    "exact": CodeFamily(),
    "bernoulli": CodeFamily(name="bernoulli", support="bernoulli"),
    "lognormal": CodeFamily(name="lognormal", magnitudes="lognormal"),
    "powerlaw": CodeFamily(name="powerlaw", frequencies="powerlaw"),
    "noisy": CodeFamily(name="noisy", noise=0.2),
    "realistic": CodeFamily(name="realistic", support="bernoulli", magnitudes="lognormal", frequencies="powerlaw",
                            noise=0.1),
}
"""The named code families, "exact" (the default) first."""


def code_family(codes: "str | CodeFamily") -> CodeFamily:
    """The family named ``codes`` (a key of CODE_FAMILIES), or ``codes`` itself when it is a CodeFamily."""
    if isinstance(codes, CodeFamily):
        return codes
    if isinstance(codes, str) and codes in CODE_FAMILIES:
        return CODE_FAMILIES[codes]
    raise ValueError(f"codes={codes!r}: not a code family; pick one of {', '.join(CODE_FAMILIES)} "
                     f"(or pass a CodeFamily)")


def with_noise(codes: "str | CodeFamily", noise: float) -> CodeFamily:
    """The family ``codes`` with its noise level replaced (e.g. the bernoulli codes with 10% noise)."""
    fam = code_family(codes)
    return dataclasses.replace(fam, name=fam.name if noise == fam.noise else f"{fam.name}+noise {noise:g}", noise=noise)


def frequency_weights(family: CodeFamily, N: int) -> Tensor:
    """(N,) float64 relative frequency weights of the atoms (all ones for uniform frequencies)."""
    if family.frequencies == "uniform":
        return torch.ones(N, dtype=torch.float64)
    return torch.arange(1, N + 1, dtype=torch.float64).pow(-float(family.zipf_exponent))


def bernoulli_probabilities(family: CodeFamily, N: int, K: int) -> Tensor:
    """(N,) float64 probabilities p_a of the Bernoulli supports: proportional to the frequency weights,
    summing to K, none above 1 (the excess of a capped atom is spread over the others in proportion)."""
    w = frequency_weights(family, N)
    p = torch.zeros(N, dtype=torch.float64)
    free = torch.ones(N, dtype=torch.bool)
    left = float(K)
    while True:                                   # water-filling: cap at 1, rescale the rest
        q = w * free * (left / float((w * free).sum()))
        over = free & (q >= 1.0)
        if not bool(over.any()):
            p[free] = q[free]
            return p
        p[over] = 1.0
        free &= ~over
        left = float(K) - float(p[~free].sum())


def _supports(family: CodeFamily, g: torch.Generator, N: int, K: int, n: int) -> Tensor:
    """(n, N) bool active atoms of each token."""
    if family.support == "bernoulli":
        p = bernoulli_probabilities(family, N, K)
        return torch.rand(n, N, generator=g, dtype=torch.float64) < p
    # exactly K: the K largest of log(u_a)/w_a (exponential race) are a weighted sample without replacement
    keys = torch.rand(n, N, generator=g, dtype=torch.float64).log() / frequency_weights(family, N)
    idx = keys.topk(K, dim=1).indices
    return torch.zeros(n, N, dtype=torch.bool).scatter_(1, idx, True)


def draw_codes(family: CodeFamily, g: torch.Generator, N: int, K: int, n: int, delta_range: tuple[float, float],
               nonneg: bool) -> Tensor:
    """(n, N) float64 codes of ``family`` drawn from ``g``: supports, then magnitudes, then signs (unless
    ``nonneg``). The exact-uniform family is ``atomslib.theory``'s own draw, not this one (its codes
    are kept bit for bit); this function draws every other family."""
    lo, hi = map(float, delta_range)
    active = _supports(family, g, N, K, n)
    if family.magnitudes == "lognormal":
        z = torch.randn(n, N, generator=g, dtype=torch.float64)
        mags = ((lo + hi) / 2) * torch.exp(family.lognormal_sigma * z)
    else:
        mags = lo + (hi - lo) * torch.rand(n, N, generator=g, dtype=torch.float64)
    if not nonneg:
        mags = mags * (torch.randint(0, 2, (n, N), generator=g) * 2 - 1)
    return torch.where(active, mags, torch.zeros((), dtype=torch.float64))


def add_noise(family: CodeFamily, acts: Tensor, g: torch.Generator) -> tuple[Tensor, float]:
    """``acts`` plus the family's Gaussian noise, and the noise's per-coordinate standard deviation σ
    (noise · RMS‖m‖ / √H over the rows of ``acts``; 0 and ``acts`` itself when the family has none)."""
    if family.noise == 0:
        return acts, 0.0
    rms = float(acts.pow(2).sum(1).mean().sqrt())
    sigma = family.noise * rms / math.sqrt(acts.shape[1])
    return acts + sigma * torch.randn(acts.shape, generator=g, dtype=acts.dtype), sigma
