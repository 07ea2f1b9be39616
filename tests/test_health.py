"""Health before verdicts: massive coordinates, the trainer's input map, the R² variant and the gate.

Expected-results tests on a small synthetic layer built like Gemma 3's (issue: every SAE of chapter 3
collapsed there): planted sparse atoms plus a few *massive* coordinates, one with a large constant
offset and a large variance, a few others with large variance.
"""
from __future__ import annotations

import pytest
import torch

from atomslib import criteria
from atomslib.activation_stats import MASSIVE_STD_RATIO, activation_stats, massive_coordinates
from atomslib.book.results import INCONCLUSIVE, claim, evaluate_claims
from atomslib.health import HealthBar, failed_checks, health_label, sae_health
from atomslib.input_map import coordinate_clip
from atomslib.train import STATE_FILE, train_tsae
from atomslib.tsae import TSAE, TSAEConfig
from _massive_layer import massive_layer, sae_metrics


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def layer():
    return massive_layer()


def test_massive_coordinates_and_activation_stats(layer):
    train, _ = layer
    idx = massive_coordinates(train.std(0))
    assert set(idx.tolist()) == {0, 1, 2, 3}
    st = activation_stats(train)
    assert st["n_massive"] == 4 and st["massive"][0]["coordinate"] == 0 and st["massive"][0]["abs_mean"] > 250
    assert st["massive_variance_share"] > 0.9 and st["mean_vector_norm"] > 0.9 * st["mean_norm"]
    assert st["mean_centred_norm"] < 0.5 * st["mean_norm"]
    with pytest.raises(ValueError, match="ratio must be a number >= 1"):
        massive_coordinates(train.std(0), 0.5)


def test_r2_without_massive_does_not_credit_a_reconstruction_of_the_massive_coordinates(layer):
    _, m = layer
    only_massive = m.mean(0).repeat(m.shape[0], 1)
    only_massive[:, :4] = m[:, :4]                      # right on the 4 massive coordinates, the mean elsewhere
    assert criteria.faithfulness_r2(m, only_massive) > 0.9
    assert abs(criteria.faithfulness_r2(m, only_massive, variant="without_massive")) < 1e-9
    assert criteria.faithfulness_r2(m, m, variant="without_massive") == pytest.approx(1.0)
    assert MASSIVE_STD_RATIO == 10.0


def test_coordinate_clip_brings_massive_coordinates_to_the_ratio(layer):
    train, _ = layer
    c = coordinate_clip(train, 10.0)
    std = (train * c).std(0)
    assert float(std.max()) == pytest.approx(10.0 * float(train.std(0).median()), rel=1e-6)
    assert bool((c[4:] == 1).all()) and bool((c[:4] < 1).all())


@pytest.fixture(scope="module")
def trained(layer):
    train, _ = layer
    cfg = dict(d_model=32, n_units=128, n_tokens=200_000, seed=1)
    return (train_tsae(train, TSAEConfig(**cfg), progress=False),
            train_tsae(train, TSAEConfig(**cfg, normalize="mean_norm", coord_std_clip=None), progress=False))


def test_the_defaults_stay_healthy_where_the_version_6_input_map_collapsed(layer, trained):
    """Expected results (2026-12-06, this 2-core CPU): the defaults keep their units and reconstruct
    the ordinary coordinates; the version-6 input map (uncentred scale, no clip) lets most units die
    and reconstructs the massive ones only. Both are judged by sae_health, as the book's verdicts are."""
    _, held = layer
    new, old = trained
    assert new.fit_info["coordinates_clipped"] == 4 and old.fit_info["coordinates_clipped"] == 0
    assert new.fit_info["whitened"] is False          # the clip is folded in, but it is not the AIP whitening
    h_new, h_old = sae_health(new, sae_metrics(new, held)), sae_health(old, sae_metrics(old, held))
    assert h_new.healthy, h_new.reasons
    assert h_new.dead_share <= 0.10 and h_new.r2_without_massive > 0.5
    assert not h_old.healthy
    assert h_old.dead_share > 0.5 or h_old.r2 - h_old.r2_without_massive > 0.25
    # the returned model takes raw activations (the clip and the scale are folded into its weights)
    with torch.no_grad():
        assert criteria.faithfulness_r2(held, new(held).m_hat) > 0.8


def test_an_unhealthy_sae_makes_the_claim_inconclusive_and_a_healthy_one_does_not(layer, trained):
    _, held = layer
    new, old = trained
    rows = evaluate_claims({"03_neurons_features_atoms": {"claims": [
        claim("atoms.r2", 0.995, "R2=euclid", "heldout", model="g", layer=2,
              health=sae_health(old, sae_metrics(old, held))._asdict()),
        claim("atoms.r2", 0.995, "R2=euclid", "heldout", model="g", layer=9,
              health=sae_health(new, sae_metrics(new, held))._asdict())]}})
    by = {r["layer"]: r for r in rows if r.get("model")}
    assert by[2]["verdict"] == INCONCLUSIVE and by[2]["SAE health"].startswith("unhealthy: ")
    assert by[9]["verdict"] == "supported" and by[9]["SAE health"].startswith("healthy")


def test_health_bar_reasons_name_each_failure():
    class Units:
        cfg = TSAEConfig(d_model=8, n_units=32, sparsity_form="target", target_l0=4)
        fit_info = {"loss_trend": 0.9}
    h = sae_health(Units(), {"dead_fraction": 0.5, "mean_l0": 9.0, "r2_euclid": 0.8, "r2_without_massive": 0.1,
                             "n_massive": 5})
    assert not h.healthy and len(h.reasons) == 4
    assert "50.0% of units never active" in h.reasons[0] and "L0 9 held out against a target of 4" in h.reasons[1]
    assert "without the 5 massive coordinates" in h.reasons[2] and "still falling" in h.reasons[3]
    assert "training tokens" not in h.reasons[1] and h.l0_train is None

    class Overfit(Units):                      # met its target in training, fires more on unseen tokens
        fit_info = {"loss_trend": 0.0, "l0": 4.1}

    class Missed(Units):                       # never reached its target
        fit_info = {"loss_trend": 0.0, "l0": 8.5}
    over, missed = (sae_health(u(), {"mean_l0": 9.0}).reasons[0] for u in (Overfit, Missed))
    assert "4.1 on its training tokens: the codes fire more on unseen tokens" in over
    assert "8.5 on its training tokens" in missed and "unseen" not in missed
    assert sae_health(Units(), {"dead_fraction": 0.01, "mean_l0": 4.2}, bar=HealthBar(max_loss_trend=1.0)).healthy
    with pytest.raises(ValueError, match="HealthBar.max_dead_share"):
        HealthBar(max_dead_share=-1)


def test_health_label_says_in_a_few_words_what_the_reasons_say():
    class Units:
        cfg = TSAEConfig(d_model=8, n_units=32, sparsity_form="target", target_l0=4)
        fit_info = {"loss_trend": 0.9, "l0": 8.5}
    sick = sae_health(Units(), {"dead_fraction": 0.5, "mean_l0": 9.0, "r2_euclid": 0.8, "r2_without_massive": 0.1})
    assert health_label(sick._asdict()) == "dead 50%, 9 (8.5), massive, falling"
    assert failed_checks(0.5, 9.0, 4.0, 0.8, 0.1, 0.9) == ["dead", "l0", "massive", "falling"]
    well = sae_health(Units(), {"dead_fraction": 0.01, "mean_l0": 4.2}, bar=HealthBar(max_loss_trend=1.0))
    assert health_label(well._asdict()) == "ok" and health_label(None) is None
    assert failed_checks(0.01, 4.2, 4.0, None, None, 0.9, bar=HealthBar(max_loss_trend=1.0)) == []
    # a record judged against a stricter bar than the label's: the label falls back on the record's reasons
    strict = sae_health(Units(), {"mean_l0": 4.2}, bar=HealthBar(max_loss_trend=0.1))
    assert health_label(strict._asdict(), bar=HealthBar(max_loss_trend=1.0)) == strict.reasons[0]


def test_resume_with_a_clipped_input_is_bit_identical(layer, tmp_path):
    train, _ = layer
    train = train[:8_000]
    cfg = TSAEConfig(d_model=32, n_units=64, n_tokens=20_480, log_every=1, checkpoint_every=7, seed=2)
    ref = train_tsae(train, cfg, progress=False)
    assert ref.fit_info["coordinates_clipped"] == 4

    def stop(rec):
        if rec["step"] >= 17:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_tsae(train, cfg, checkpoint_dir=tmp_path, progress=False, log=stop)
    assert (tmp_path / STATE_FILE).is_file()
    resumed = train_tsae(train, cfg, checkpoint_dir=tmp_path, progress=False)
    assert all(torch.equal(getattr(ref, k), getattr(resumed, k)) for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"))
    again = TSAE.load(tmp_path)
    assert torch.equal(again.W_dec, ref.W_dec)
