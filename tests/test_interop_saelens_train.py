"""SAELens's JumpReLU trainer given atomslib's input map (issue 29: its units train healthy on Gemma 3 too).

On a small synthetic layer built like Gemma 3's (tests/_massive_layer.py: a planted problem whose coordinate 0
has a large constant offset and 40x the typical std, coordinates 1-3 12-20x): under SAELens's own
normalisation most units die; given atomslib's input map (``input_map="atoms"``, the default) they live,
and the map is folded back exactly into the returned raw-space TSAE.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("sae_lens")

from atomslib import interop_saelens_train  # noqa: E402
from atomslib.interop_saelens_train import INPUT_MAPS, atoms_input_map, train_saelens_jumprelu  # noqa: E402
from atomslib.tsae import TSAEConfig  # noqa: E402
from _massive_layer import massive_layer, sae_metrics  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def layer():
    return massive_layer(n_train=20_000)


def _train(rows, n_tokens, **kw):
    return train_saelens_jumprelu(rows, 32, 128, n_tokens=n_tokens, batch_size=512, l0_coeff=1 / 32, progress=False,
                                  **kw)


def test_the_fold_is_exact(layer, monkeypatch):
    """encode/decode of raw activations by the returned TSAE = SAELens's SAE applied to the mapped activations."""
    train, held = layer
    seen = {}
    real = interop_saelens_train.units_from_saelens

    def keep(sae, **kw):
        seen["sae"] = sae
        return real(sae, **kw)
    monkeypatch.setattr(interop_saelens_train, "units_from_saelens", keep)
    units = _train(train, 20_480)
    sae = seen["sae"]
    imap = atoms_input_map(train[:TSAEConfig.__dataclass_fields__["norm_estimate_tokens"].default])
    rec = units.fit_info["recipe"]
    assert rec["input_map"] == "atoms" and rec["b_dec_init"] == "mean" and rec["coordinates_clipped"] == 4
    assert rec["scale"] == pytest.approx(imap.scale, rel=1e-12) and units.fit_info["input_scale"] == rec["scale"]
    assert units.fit_info["whitened"] is False
    x = (held.double() * imap.clip_H * imap.scale).float()
    with torch.no_grad():
        out = units(held)
        pre_sl = sae.encode_with_hidden_pre(x)[1]
        codes_sl = sae.encode(x)
        m_hat_sl = sae.decode(codes_sl).double() / (imap.clip_H * imap.scale)
    pre_ours = (held - units.b_dec) @ units.W_enc.T + units.b_enc
    assert torch.allclose(pre_ours, pre_sl, rtol=1e-4, atol=1e-4 * float(pre_sl.abs().max()))
    assert torch.allclose(out.codes, codes_sl, rtol=1e-4, atol=1e-4 * float(codes_sl.abs().max()))
    scale_H = held.std(0, keepdim=True).double()            # per coordinate: the massive ones are 40x the others
    assert float(((out.m_hat.double() - m_hat_sl) / scale_H).abs().max()) < 1e-3


def test_saelens_own_normalisation_collapses_where_atoms_map_keeps_the_units(layer):
    """Expected results (2026-12-06, this 2-core CPU, one thread; 100k tokens, held out): SAELens's own
    normalisation (uncentred scale, b_dec at zero, no clip) left 95% of the units never active and
    reconstructed the massive coordinates only (R² without them -0.23); given atomslib's input map 16%
    (SAELens's recipe on the same planted problem without the massive coordinates: 18%) at 0.58."""
    train, held = layer
    own = sae_metrics(_train(train, 100_000, input_map="saelens"), held)
    ours = sae_metrics(_train(train, 100_000), held)
    assert own["dead_fraction"] > 0.75 and own["r2_without_massive"] < 0.1, own
    assert ours["dead_fraction"] <= 0.25 and ours["r2_without_massive"] > 0.45, ours


def test_a_one_shot_iterator_trains_as_its_re_iterable(layer):
    """The map's sample is read from the head of the data; a one-shot iterator does not lose those rows."""
    train, _ = layer
    batches = list(train[:6_000].split(1000))
    a = _train(batches, 4_096)
    b = _train(iter(batches), 4_096)
    assert a.fit_info["recipe"]["scale"] == b.fit_info["recipe"]["scale"]
    assert torch.equal(a.W_enc, b.W_enc) and torch.equal(a.b_dec, b.b_dec)


def test_a_bad_input_map_is_one_clear_error(layer):
    train, _ = layer
    assert INPUT_MAPS == ("atoms", "saelens")
    with pytest.raises(ValueError, match=r"input_map='atomslib': use 'atoms' .* or 'saelens'"):
        _train(train, 1024, input_map="atomslib")
    with pytest.raises(ValueError, match="dead_window_tokens must be an integer >= 1"):
        _train(train, 1024, dead_window_tokens=0)
    with pytest.raises(ValueError, match="pre_act_loss_coeff must be a finite number >= 0 or None"):
        _train(train, 1024, pre_act_loss_coeff=float("nan"))


def test_the_book_store_trains_with_the_default_map_and_keys_on_the_recipe_version(tmp_path, monkeypatch):
    """Chapter 3's `store.train_saelens_units(..., batch_size=512)`: the default input map reaches the
    trainer, and a model stored by another recipe version is not reused."""
    from types import SimpleNamespace

    from atomslib.book import unit_store as store
    rows = massive_layer(n_train=2_000)[0]
    cache = SimpleNamespace(d_model=32, manifest={"n_tokens": 2_000, "request": {"fake": 1}},
                            load=lambda layer, max_tokens=None: rows[:max_tokens])
    kw = dict(capacity=1.0, n_tokens=1_024, cache_dir=tmp_path, progress=False, batch_size=512)
    units = store.train_saelens_units(cache, 2, **kw)
    assert units.fit_info["recipe"]["input_map"] == "atoms" and units.fit_info["recipe"]["batch_size"] == 512
    assert len(list((tmp_path / "units").glob("saelens-L2-*"))) == 1
    store.train_saelens_units(cache, 2, **kw)                                      # reused
    assert len(list((tmp_path / "units").glob("saelens-L2-*"))) == 1
    monkeypatch.setattr(interop_saelens_train, "RECIPE_VERSION", interop_saelens_train.RECIPE_VERSION + 1)
    store.train_saelens_units(cache, 2, **kw)                                      # another recipe: trained anew
    assert len(list((tmp_path / "units").glob("saelens-L2-*"))) == 2
