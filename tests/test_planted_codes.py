"""atomslib.planted_codes: the planted code families have the statistics they say they have, the default
family draws what every planted problem drew before the families existed, and a bad name says the choices."""
from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import pytest
import torch

from atomslib import identification as idf
from atomslib import planted_codes as pc
from atomslib.theory import synthetic_atoms

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from planted import DEFAULT_PROBLEMS, N_TRAIN  # noqa: E402

H, N, K = 24, 48, 3
N_SAMPLES = 20_000


def counts(codes):
    return (codes != 0).sum(1).double()


def draw(family, n=N_SAMPLES, **kw):
    return synthetic_atoms(H, N, K=K, n_samples=n, seed=11, codes=family, **kw)


# ---- the default is unchanged ---------------------------------------------------------------------------

def test_the_default_family_draws_the_codes_of_before_bit_for_bit():
    """Hash and sums recorded from planted_problem before the families existed (commit b38822e). The codes
    come from the generator alone (no BLAS), so their bytes are the same on every machine."""
    p = idf.planted_problem(16, 24, 3, n_train=200, n_heldout=50, seed=0)
    assert hashlib.sha256(p.atoms.codes.numpy().tobytes()).hexdigest()[:16] == "6f53140706fd318d"
    assert math.isclose(float(p.train.double().sum()), 14.178039688371427, rel_tol=1e-9)
    q = idf.planted_problem(12, 8, 2, n_train=200, n_heldout=50, seed=3)    # N <= H: orthonormal atoms
    assert hashlib.sha256(q.atoms.codes.numpy().tobytes()).hexdigest()[:16] == "9190caf181f9761e"
    named = idf.planted_problem(16, 24, 3, n_train=200, n_heldout=50, seed=0, codes="exact")
    assert torch.equal(named.train, p.train) and torch.equal(named.atoms.codes, p.atoms.codes)
    assert p.atoms.family == pc.CODE_FAMILIES["exact"] and p.atoms.noise_std == 0.0
    assert torch.equal(p.atoms.acts, p.atoms.codes @ p.atoms.D)


# ---- each family's statistics ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(pc.CODE_FAMILIES))
def test_every_family_has_mean_active_count_k(name):
    s = draw(name)
    c = counts(s.codes)
    assert abs(float(c.mean()) - K) < 0.03 * K, f"{name}: mean active count {float(c.mean()):.3f}, K = {K}"
    if pc.CODE_FAMILIES[name].variable_support:
        assert float(c.std()) > 1.0 and int(c.min()) == 0 and int(c.max()) >= 2 * K   # Binomial-like spread
    else:
        assert bool((c == K).all()), f"{name}: exact supports must have exactly K atoms on every token"


def test_bernoulli_counts_follow_the_binomial():
    c = counts(draw("bernoulli").codes)
    p = K / N
    assert abs(float(c.var()) - N * p * (1 - p)) < 0.1 * N * p * (1 - p)
    assert abs(float((c == 0).double().mean()) - (1 - p) ** N) < 0.01     # tokens with no active atom


@pytest.mark.parametrize("name", ["lognormal", "realistic"])
def test_lognormal_magnitudes_are_heavy_tailed_with_the_median_of_the_uniform_range(name):
    s = draw(name)
    m = s.codes[s.codes != 0].abs()
    sigma = pc.CODE_FAMILIES[name].lognormal_sigma
    assert abs(float(m.median()) - 1.5) < 0.03 * 1.5                    # the middle of delta_range (1, 2)
    assert abs(float(m.log().std()) - sigma) < 0.03 * sigma
    assert float(m.quantile(0.999) / m.median()) > 3.0                   # the uniform's ratio is at most 4/3
    assert s.delta_range == (float(m.min()), float(m.max()))            # the drawn range, for the theorem's check
    u = draw("exact").codes
    u = u[u != 0]
    assert float(u.quantile(0.999) / u.median()) < 1.34


@pytest.mark.parametrize("name", ["powerlaw", "realistic"])
def test_powerlaw_frequencies_fall_with_the_atom_index(name):
    s = draw(name, n=40_000)
    freq = (s.codes != 0).double().mean(0)
    rank = torch.arange(N, dtype=torch.float64)
    order = torch.argsort(torch.argsort(freq, descending=True)).double()
    spearman = float(torch.corrcoef(torch.stack([rank, order]))[0, 1])
    assert spearman > 0.95, f"{name}: frequency order vs atom index, Spearman {spearman:.3f}"
    assert float(freq[0] / freq[-1]) > 10
    if name == "realistic":   # Bernoulli supports: the frequencies are the power-law probabilities themselves
        p = pc.bernoulli_probabilities(pc.CODE_FAMILIES[name], N, K)
        assert math.isclose(float(p.sum()), K, rel_tol=1e-12) and float(p.max()) <= 1.0
        assert torch.allclose(p[1:] / p[:-1], (torch.arange(1, N, dtype=torch.float64) /
                                               torch.arange(2, N + 1, dtype=torch.float64)), rtol=1e-12)
        assert torch.allclose(freq, p, atol=4 * float(p.max().sqrt()) / math.sqrt(40_000))


def test_bernoulli_probabilities_cap_at_one_and_still_sum_to_k():
    steep = pc.CodeFamily(name="steep", support="bernoulli", frequencies="powerlaw", zipf_exponent=3.0)
    p = pc.bernoulli_probabilities(steep, 10, 4)
    assert float(p.max()) == 1.0 and math.isclose(float(p.sum()), 4.0, rel_tol=1e-12)
    assert bool((p[1:] <= p[:-1]).all())


@pytest.mark.parametrize("name", ["noisy", "realistic"])
def test_noise_has_the_stated_level_relative_to_the_token_norm(name):
    s = draw(name)
    clean = s.codes @ s.D
    noise = s.acts - clean
    ratio = float(noise.pow(2).sum(1).mean().sqrt() / clean.pow(2).sum(1).mean().sqrt())
    assert abs(ratio - pc.CODE_FAMILIES[name].noise) < 0.02 * pc.CODE_FAMILIES[name].noise
    assert abs(float(noise.std()) - s.noise_std) < 0.02 * s.noise_std
    assert abs(float(noise.mean())) < 0.02 * s.noise_std


def test_noise_is_a_separate_parameter_of_planted_problem():
    p = idf.planted_problem(16, 24, 2, n_train=2000, n_heldout=100, seed=1, codes="bernoulli", noise=0.3)
    clean = idf.planted_problem(16, 24, 2, n_train=2000, n_heldout=100, seed=1, codes="bernoulli")
    assert torch.equal(p.atoms.codes, clean.atoms.codes)               # the same codes, only the noise added
    assert p.atoms.family.noise == 0.3 and p.atoms.family.support == "bernoulli" and clean.atoms.noise_std == 0
    assert torch.equal(p.heldout_codes, clean.heldout_codes)           # the truth scored against is noise-free
    assert not torch.equal(p.train, clean.train)
    off = idf.planted_problem(16, 24, 2, n_train=2000, n_heldout=100, seed=1, codes="noisy", noise=0.0)
    assert off.atoms.noise_std == 0.0 and torch.equal(off.atoms.acts, off.atoms.codes @ off.atoms.D)


def test_the_rarest_atom_is_active_often_enough_on_the_benchmark_problems():
    """The bench's default grid with the power-law families: the rarest atom of every problem is active in
    at least MIN_ATOM_COUNT training tokens."""
    for (h, n, k) in DEFAULT_PROBLEMS:
        for name in ("powerlaw", "realistic"):
            for seed in (5, 6):
                s = synthetic_atoms(h, n, K=k, n_samples=N_TRAIN, seed=idf.planted_seed(seed), codes=name)
                rarest = int((s.codes != 0).sum(0).min())
                assert rarest >= pc.MIN_ATOM_COUNT, f"{name} {(h, n, k)} seed {seed}: rarest atom in {rarest} tokens"


# ---- scores by frequency band -----------------------------------------------------------------------

class Units:
    def __init__(self, D):
        self.D = D

    def dictionary(self):
        return self.D


def test_recovery_by_frequency_finds_the_lost_rare_atoms():
    p = idf.planted_problem(16, 30, 2, n_train=3000, n_heldout=100, seed=2, codes="powerlaw")
    full = idf.recovery_by_frequency(p, Units(p.atoms.D))
    assert [b.band for b in full] == ["common", "middle", "rare"] and all(b.recovered_95 == 1.0 for b in full)
    assert sum(b.n_atoms for b in full) == 30 and full[0].min_count >= full[-1].max_count
    counts_ = idf.train_atom_counts(p)
    rare = torch.argsort(counts_, descending=True, stable=True)[20:]
    D = p.atoms.D.clone()
    D[rare] = torch.randn(10, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lost = idf.recovery_by_frequency(p, Units(D))
    assert [b.recovered_95 for b in lost] == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="n_bands"):
        idf.recovery_by_frequency(p, Units(D), n_bands=0)


# ---- bad input ------------------------------------------------------------------------------------------

def test_a_bad_family_name_lists_the_choices():
    with pytest.raises(ValueError, match="pick one of exact, bernoulli, lognormal, powerlaw, noisy, realistic"):
        idf.planted_problem(16, 24, 2, n_train=100, codes="zipf")
    with pytest.raises(ValueError, match="codes="):
        synthetic_atoms(16, 24, K=2, n_samples=10, codes=3)


def test_bad_family_fields_and_options_name_what_to_fix():
    with pytest.raises(ValueError, match="support="):
        pc.CodeFamily(support="poisson")
    with pytest.raises(ValueError, match="noise="):
        pc.CodeFamily(noise=-0.1)
    with pytest.raises(ValueError, match="exact code family only"):
        synthetic_atoms(16, 24, K=2, n_samples=10, codes="bernoulli", co_active=2)


def test_the_benchmark_names_its_flag_for_a_bad_family(tmp_path):
    import planted

    with pytest.raises(SystemExit, match=r"--families: unknown code family zipf; use some of exact,bernoulli"):
        planted.main(["--quick", "--families", "exact,zipf", "--out", str(tmp_path / "p.json")])
