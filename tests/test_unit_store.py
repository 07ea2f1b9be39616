"""atomslib.book.unit_store and atomslib.book.baselines: the store the notebooks share (load or train,
keyed, once) and the paper's baselines, outside the full book run."""
from __future__ import annotations

import math

import pytest
import torch

from atomslib.book import baselines, unit_store
from atomslib.criteria import faithfulness_r2


def test_units_are_trained_once_then_loaded_and_a_new_setting_is_a_new_entry(small_cache, tmp_path):
    kw = dict(capacity=0.5, cache_dir=tmp_path, n_tokens=2048, progress=False, seed=0)
    first = unit_store.train_units("atoms", small_cache, 3, **kw)
    done = sorted(tmp_path.glob("units/atoms-L3-*/DONE"))
    assert len(done) == 1
    stamp = done[0].stat().st_mtime_ns
    again = unit_store.train_units("atoms", small_cache, 3, **kw)
    assert done[0].stat().st_mtime_ns == stamp                    # loaded, not trained again
    assert torch.equal(first.W_dec, again.W_dec) and again.fit_info["harvest"]["layer"] == 3
    unit_store.train_units("atoms", small_cache, 3, **{**kw, "seed": 1})
    assert len(list(tmp_path.glob("units/atoms-L3-*/DONE"))) == 2
    sets = unit_store.train_unit_set(small_cache, [3], {"atoms": {}}, **kw)
    assert list(sets) == [("atoms", 3)] and torch.equal(sets[("atoms", 3)].W_dec, first.W_dec)
    with pytest.raises(ValueError, match="kind must be 'atoms' or 'features'"):
        unit_store.train_units("neurons", small_cache, 3, **kw)


def test_prefetched_units_are_those_trained_one_by_one_on_one_thread(small_cache, tmp_path):
    kw = dict(capacity=0.5, n_tokens=2048, progress=False, seed=0)
    recipes = {"atoms": {}, "features": {}}
    sets = unit_store.train_unit_set(small_cache, [3, 15], recipes, cache_dir=tmp_path / "side", workers=2, **kw)
    assert len(list((tmp_path / "side").glob("units/*/DONE"))) == 4        # trained in the children, then loaded
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for (kind, layer), units in sets.items():
            alone = unit_store.train_units(kind, small_cache, layer, cache_dir=tmp_path / "alone", **kw)
            assert torch.equal(alone.W_dec, units.W_dec) and torch.equal(alone.threshold, units.threshold), (kind, layer)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    calls = []
    unit_store.prefetch([lambda: calls.append(1)], device="cuda")           # off the CPU: the notebook's calls train
    assert calls == []


def test_a_damaged_final_model_is_trained_again_never_used(small_cache, tmp_path):
    kw = dict(capacity=0.5, cache_dir=tmp_path, n_tokens=1024, progress=False)
    first = unit_store.train_units("features", small_cache, 15, **kw)
    folder = next(tmp_path.glob("units/features-L15-*"))
    for f in (p for p in folder.glob("*.safetensors") if not p.name.startswith("trainer_state")):
        f.write_bytes(b"not a tensor file")
    again = unit_store.train_units("features", small_cache, 15, **kw)
    assert (folder / "DONE").is_file() and torch.allclose(first.W_dec, again.W_dec)


def test_encoding_in_batches_is_encoding_at_once(small_cache, tmp_path):
    units = unit_store.train_units("atoms", small_cache, 3, capacity=0.5, cache_dir=tmp_path, n_tokens=1024,
                                   progress=False)
    m = small_cache.load(3)
    codes, m_hat = unit_store.encode_rows(units, m, batch_size=97)
    o = units(m)
    assert torch.allclose(codes, o.codes) and torch.allclose(m_hat, o.m_hat)
    m2, codes2, _ = unit_store.encode_all(None, small_cache, 3)
    assert torch.equal(m2, codes2)                                   # neurons: codes are the activations


def test_memorisation_reconstructs_its_own_rows_exactly_and_not_new_ones():
    g = torch.Generator().manual_seed(0)
    train, new = torch.randn(200, 16, generator=g), torch.randn(100, 16, generator=g)
    own = baselines.memorisation_metrics(train, train, q_star=False)
    assert own["r2_euclid"] == pytest.approx(1.0, abs=1e-6) and own["mean_l0"] == 1.0 and own["n_units"] == 200
    held = baselines.memorisation_metrics(train, new, q_star=False)
    assert held["r2_euclid"] < 0.5
    mem = baselines.memorise(baselines.memorisation_dictionary(train), new)
    assert faithfulness_r2(new, mem.m_hat) == pytest.approx(held["r2_euclid"], abs=1e-6)


def test_critical_capacity_and_its_growth_with_scale():
    assert baselines.critical_capacity([4, 1, 2], [0.95, 0.5, 0.91], 0.9) == 2.0
    assert baselines.critical_capacity([1, 2], [0.5, None], 0.9) is None
    assert baselines.grows_with_scale([1e3, 1e4, 1e5], [1, 2, None]) == 1.0     # never reached: beyond all
    assert baselines.grows_with_scale([1e3, 1e4], [2, 2]) == 0.0
    assert baselines.grows_with_scale([1e3, 1e4], [None, None]) is None
    assert math.isnan(unit_store.variance_share_of_top(torch.zeros(10, 3)))


def test_stored_units_train_on_a_shuffled_stream_like_a_tensor_input(small_cache, tmp_path):
    """The book's units see the harvest shuffled (seeded, a new order each epoch), not in harvest order, where a
    batch holds a few contexts' consecutive tokens; shuffle=False keeps harvest order, as its own entry."""
    from atomslib.train import train_tsae
    from atomslib.tsae import TSAEConfig

    kw = dict(capacity=0.5, n_tokens=4096, progress=False, seed=3, batch_size=256)
    stored = unit_store.train_units("atoms", small_cache, 3, cache_dir=tmp_path, **kw)
    H = small_cache.d_model
    cfg = TSAEConfig(d_model=H, n_units=int(round(0.5 * H)), n_tokens=4096, seed=3, batch_size=256)

    def direct(shuffle):
        return train_tsae(small_cache.reader(3, batch_size=256, shuffle=shuffle, seed=3), cfg, progress=False)

    assert torch.equal(stored.W_dec, direct(True).W_dec)
    assert not torch.equal(stored.W_dec, direct(False).W_dec)
    ordered = unit_store.train_units("atoms", small_cache, 3, cache_dir=tmp_path, shuffle=False, **kw)
    assert torch.equal(ordered.W_dec, direct(False).W_dec)
    assert len(list(tmp_path.glob("units/atoms-L3-*/DONE"))) == 2
