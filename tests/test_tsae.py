"""TSAE module: config validation, encode/decode semantics, folding, save/load."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from atomslib.tsae import SAEOutput, TSAE, TSAEConfig


def _model(activation="threshold", H=12, N=20, seed=0, dtype="float64"):
    m = TSAE(TSAEConfig(d_model=H, n_units=N, activation=activation, seed=seed, dtype=dtype, init_threshold=0.3))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        m.b_enc.copy_(torch.randn(N, generator=g, dtype=torch.float64) * 0.1)
        m.b_dec.copy_(torch.randn(H, generator=g, dtype=torch.float64) * 0.5)
        if activation == "threshold":
            m.threshold.copy_(torch.rand(N, generator=g, dtype=torch.float64))
    return m


# ---- config ------------------------------------------------------------------------------------
def test_defaults_are_valid_and_documented():
    cfg = TSAEConfig(d_model=576, n_units=2304)
    assert cfg.activation == "threshold" and cfg.normalize == "centred_norm" and cfg.coord_std_clip == 2.0 and cfg.l0_coeff is None and cfg.sparsity_coeff == 1 / cfg.d_model
    assert TSAEConfig.from_dict(cfg.to_dict()) == cfg
    # every field carries a docstring in the source (the contract of DESIGN.md)
    import inspect
    src = inspect.getsource(TSAEConfig)
    for f in cfg.to_dict():
        line = next(ln for ln in src.splitlines() if ln.strip().startswith(f"{f}:"))
        after = src[src.index(line) + len(line):].lstrip()
        assert after.startswith('"""'), f"field {f} has no docstring"


@pytest.mark.parametrize("field,value", [
    ("d_model", 0), ("n_units", 0), ("n_units", -3), ("d_model", 2.5), ("activation", "gelu"),
    ("l0_coeff", -1.0), ("l1_coeff", float("nan")), ("bandwidth", 0.0), ("lr", float("inf")),
    ("init_threshold", -0.1), ("threshold_lr", -1.0), ("threshold_lr_boost", -1.0), ("threshold_boost_frac", 1.5), ("lr_warmup_frac", 1.5), ("adam_beta2", 1.0),
    ("batch_size", 0), ("n_tokens", 0), ("n_epochs", 0.0), ("dtype", "float16"), ("normalize", "zscore"),
    ("kernel", "gpu"), ("sparsity_form", "hinge"), ("checkpoint_every", -1), ("log_every", 0),
    ("target_control", "pid"), ("target_gain", -1.0), ("target_bound", 0.5), ("target_integral_rate", float("nan")),
    ("token_clip", 0.5), ("token_clip", float("nan")), ("coord_std_clip", 0.5),
    ("whiten_center", "False"), ("whiten", 1), ("shuffle", None), ("unit_norm_decoder", "no"), ("ste_to_pre", "true"),
    ("device", "cuda:0" if not torch.cuda.is_available() else "nonsense"),
])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"TSAEConfig.{field}"):
        TSAEConfig(**{"d_model": 8, "n_units": 16, field: value})


def test_cross_field_validation():
    with pytest.raises(ValueError, match="target_l0"):
        TSAEConfig(d_model=8, n_units=16, sparsity_form="target")
    with pytest.raises(ValueError, match="sparsity_form"):
        TSAEConfig(d_model=8, n_units=16, activation="relu", sparsity_form="target", target_l0=3)
    with pytest.raises(ValueError, match="lr_decay_frac"):
        TSAEConfig(d_model=8, n_units=16, lr_warmup_frac=0.6, lr_decay_frac=0.6)
    with pytest.raises(ValueError, match="unknown fields"):
        TSAEConfig.from_dict({"d_model": 8, "n_units": 4, "colour": "blue"})
    with pytest.raises(TypeError, match="TSAEConfig"):
        TSAE({"d_model": 8, "n_units": 4})


def test_threshold_lr_default_depends_on_the_sparsity_form_and_reaches_the_optimiser():
    """lr under the L0 penalty and under the target form (why: TSAEConfig.threshold_lr); a set
    value wins; and the trainer's Adam group of the threshold gets exactly that lr."""
    from atomslib.train import _Run

    pen = TSAEConfig(d_model=8, n_units=16, lr=2e-3)
    tgt = TSAEConfig(d_model=8, n_units=16, lr=2e-3, sparsity_form="target", target_l0=3)
    assert pen.threshold_lr_used() == pytest.approx(2e-3)
    assert TSAEConfig(d_model=8, n_units=16, threshold_lr=2e-2).threshold_lr_used() == 2e-2
    assert tgt.threshold_lr_used() == pytest.approx(2e-3)
    assert TSAEConfig(d_model=8, n_units=16, threshold_lr=7e-4, sparsity_form="target", target_l0=3).threshold_lr_used() == 7e-4
    for cfg in (pen, tgt):
        groups = _Run(cfg, torch.device("cpu"), cfg.n_tokens).opt.param_groups
        assert groups[-1]["base_lr"] == pytest.approx(cfg.threshold_lr_used())


def test_learning_rates_grow_with_the_batch_above_512_only():
    """Above LR_REFERENCE_BATCH the thresholds' lr grows linearly with the batch and the weights' as its 1/8
    power (trainer version 9: the same token budget has fewer steps); at or below 512 both are as given;
    the exponents are fields, 0 switches the scaling off; the optimiser gets exactly the scaled values."""
    from atomslib.train import _Run
    from atomslib.tsae_config import LR_REFERENCE_BATCH

    assert LR_REFERENCE_BATCH == 512
    for b in (4, 256, 512):
        c = TSAEConfig(d_model=8, n_units=16, batch_size=b)
        assert (c.lr_used(), c.threshold_lr_used()) == (c.lr, c.lr)
    c = TSAEConfig(d_model=8, n_units=16, batch_size=4096, threshold_lr=1e-3)
    assert c.lr_used() == pytest.approx(5e-3 * 8 ** 0.125)
    assert c.threshold_lr_used() == pytest.approx(8e-3)
    off = TSAEConfig(d_model=8, n_units=16, batch_size=2048, lr_batch_exponent=0, threshold_lr_batch_exponent=0)
    assert (off.lr_used(), off.threshold_lr_used()) == (off.lr, off.lr)
    groups = _Run(c, torch.device("cpu"), c.n_tokens).opt.param_groups
    assert groups[0]["base_lr"] == pytest.approx(c.lr_used()) and groups[1]["base_lr"] == pytest.approx(8e-3)
    with pytest.raises(ValueError, match="lr_batch_exponent"):
        TSAEConfig(d_model=8, n_units=16, lr_batch_exponent=-1)


def test_target_reference_tokens_raises_the_thresholds_lr_of_short_target_form_runs():
    """With target_reference_tokens R (chapter 4's grid: 500k), a target-form run of n < R tokens multiplies the
    thresholds' lr by R / n (in its 196-step cells the thresholds could not travel to T); at or above R, by default
    (None), under the L0 penalty and the quadratic target form it is as before; it multiplies the batch's factor; the
    optimiser and the training log get it, from the tokens the run actually trains on (n_epochs too)."""
    from atomslib.train import TrainLog, _Run, train_tsae

    tgt = dict(d_model=8, n_units=16, sparsity_form="target", target_l0=3)
    short = TSAEConfig(**tgt, n_tokens=100_000, target_reference_tokens=500_000)
    assert short.threshold_lr_used() == pytest.approx(5 * short.lr)
    assert short.threshold_lr_used(250_000) == pytest.approx(2 * short.lr)
    for n in (500_000, 2_000_000):
        assert TSAEConfig(**tgt, n_tokens=n, target_reference_tokens=500_000).threshold_lr_used() == short.lr
    assert TSAEConfig(**tgt, n_tokens=100_000).threshold_lr_used() == short.lr          # the default: never
    for other in (dict(d_model=8, n_units=16), dict(tgt, target_control="quadratic")):
        assert TSAEConfig(**other, n_tokens=100_000, target_reference_tokens=500_000).threshold_lr_used() == short.lr
    assert TSAEConfig(**tgt, n_tokens=100_000, target_reference_tokens=500_000,
                      batch_size=2048).threshold_lr_used() == pytest.approx(5e-3 * 4 * 5)
    assert _Run(short, torch.device("cpu"), 100_000).opt.param_groups[-1]["base_lr"] == pytest.approx(5 * short.lr)
    with pytest.raises(ValueError, match="target_reference_tokens"):
        TSAEConfig(**tgt, target_reference_tokens=0)
    acts = torch.randn(1000, 8, generator=torch.Generator().manual_seed(0))
    log = TrainLog()
    train_tsae(acts, TSAEConfig(**tgt, n_tokens=None, n_epochs=2.0, batch_size=250, log_every=10,
                                norm_estimate_tokens=500, target_reference_tokens=500_000), progress=False, log=log)
    assert log.meta["threshold_lr"] == pytest.approx(short.lr * 500_000 / 2000)


def test_threshold_lr_boost_fades_over_its_fraction_and_reaches_the_optimiser():
    """10x at the first step under the penalty (none under the target form), 1x from
    threshold_boost_frac of the steps on, linear between; 1 or a zero fraction switch it off; and the thresholds' Adam step during training is the boosted one."""
    from atomslib.train import _threshold_boost, train_tsae

    cfg = TSAEConfig(d_model=8, n_units=16)
    assert (cfg.threshold_lr_boost_used(), cfg.threshold_boost_frac) == (10.0, 0.1)
    cfg = TSAEConfig(d_model=8, n_units=16, threshold_boost_frac=0.5)
    tgt = TSAEConfig(d_model=8, n_units=16, sparsity_form="target", target_l0=3)
    assert tgt.threshold_lr_boost_used() == 1.0 and _threshold_boost(tgt, 0, 100) == 1.0   # penalty only
    assert (tgt.init_l0_used(), cfg.init_l0_used()) == (8.0, None)            # 8T, at most N/2
    tgt = TSAEConfig(d_model=8, n_units=64, sparsity_form="target", target_l0=3, target_control="quadratic")
    assert tgt.init_l0_used() == 24.0                                          # 8T, either control
    assert dataclasses.replace(tgt, batch_size=1024).init_l0_used() == 24.0   # the quadratic: 8T at any batch
    fb = TSAEConfig(d_model=8, n_units=64, sparsity_form="target", target_l0=3, batch_size=1024)
    assert fb.init_l0_used() == 12.0                                           # the feedback: 4T above 512
    wide = TSAEConfig(d_model=64, n_units=512, batch_size=2048)               # the penalty above 512 (version 12):
    assert (wide.init_l0_used(), wide.threshold_lr_boost_used()) == (64.0, 10.0)   # starts at L0 64, still boosted
    assert dataclasses.replace(wide, batch_size=512).init_l0_used() is None   # at 512 init_threshold and 10x
    assert dataclasses.replace(wide, batch_size=512).threshold_lr_boost_used() == 10.0
    assert dataclasses.replace(wide, n_units=100).init_l0_used() == 50.0      # at most N/2
    assert dataclasses.replace(wide, init_l0=32.0, threshold_lr_boost=3.0).init_l0_used() == 32.0
    assert dataclasses.replace(wide, init_l0=0.0).init_l0_used() is None    # 0: init_threshold at any batch
    assert TSAEConfig(d_model=8, n_units=16, sparsity_form="target", target_l0=3,
                      threshold_lr_boost=4.0).threshold_lr_boost_used() == 4.0
    assert _threshold_boost(cfg, 0, 100) == pytest.approx(10.0)
    assert _threshold_boost(cfg, 25, 100) == pytest.approx(5.5)
    assert [_threshold_boost(cfg, s, 100) for s in (50, 70, 99)] == [1.0, 1.0, 1.0]
    assert _threshold_boost(TSAEConfig(d_model=8, n_units=16, threshold_lr_boost=1.0), 0, 100) == 1.0
    assert _threshold_boost(TSAEConfig(d_model=8, n_units=16, threshold_boost_frac=0.0), 0, 100) == 1.0
    seen = []

    class Spy(torch.optim.Adam):
        def step(self, *a, **k):
            seen.append((self.param_groups[0]["lr"], self.param_groups[1]["lr"]))
            return super().step(*a, **k)
    x = torch.randn(4096, 8, generator=torch.Generator().manual_seed(0))
    from unittest import mock
    with mock.patch("atomslib.train.torch.optim.Adam", Spy):
        train_tsae(x, TSAEConfig(d_model=8, n_units=16, n_tokens=100 * 64, batch_size=64, lr_warmup_frac=0.0),
                   progress=False)
    assert len(seen) == 100
    assert seen[0][1] == pytest.approx(10 * seen[0][0]) and seen[60][1] == pytest.approx(seen[60][0])


# ---- semantics ---------------------------------------------------------------------------------
def test_encode_is_threshold_gate_of_pre_activation():
    m = _model()
    x = torch.randn(50, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2
    pre = (x - m.b_dec) @ m.W_enc.T + m.b_enc
    z = m.encode(x)
    torch.testing.assert_close(m.pre_acts(x), pre)
    torch.testing.assert_close(z, torch.where(pre > m.threshold, pre, torch.zeros_like(pre)))
    assert (z[z != 0] > 0).all()       # thresholds are >= 0, so codes are positive
    out = m(x)
    assert isinstance(out, SAEOutput)
    torch.testing.assert_close(out.codes, z)
    torch.testing.assert_close(out.m_hat, z @ m.dictionary() + m.b_dec)
    torch.testing.assert_close(out.m_hat, m.decode(z))
    assert torch.equal(out.l0, (z != 0).sum(1))


def test_relu_is_the_same_module_with_zero_threshold():
    m = _model("relu")
    x = torch.randn(40, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert torch.equal(m.threshold, torch.zeros(20, dtype=m.threshold.dtype)) and not m.threshold.requires_grad
    torch.testing.assert_close(m.encode(x), torch.relu(m.pre_acts(x)))


def test_threshold_stays_float32_and_init_is_tied_unit_norm():
    m = TSAE(TSAEConfig(d_model=16, n_units=32))
    assert m.threshold.dtype == torch.float32 and m.W_enc.dtype == torch.float32
    torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(32))
    assert torch.equal(m.W_enc, m.W_dec)
    assert m.W_enc.shape == (32, 16) and m.b_dec.shape == (16,) and m.b_enc.shape == (32,)
    # the seed decides the init
    assert not torch.equal(TSAE(TSAEConfig(d_model=16, n_units=32, seed=1)).W_dec, m.W_dec)


@pytest.mark.parametrize("bad,match", [
    (torch.randn(5, 11), "width"), (torch.randn(12), "2-D"), (torch.full((3, 12), float("nan")), "NaN"),
    (torch.ones(3, 12, dtype=torch.int64), "floating"), ([[0.0] * 12], "torch.Tensor"),
])
def test_bad_inputs_name_the_argument(bad, match):
    m = _model()
    with pytest.raises((ValueError, TypeError), match=match):
        m.encode(bad)
    with pytest.raises((ValueError, TypeError), match="z"):
        m.decode(torch.randn(3, 7, dtype=torch.float64))


# ---- folding the input transform ---------------------------------------------------------------
def test_fold_input_transform_keeps_codes_and_maps_reconstructions_back():
    torch.manual_seed(0)
    H, N = 10, 24
    trained = _model(H=H, N=N)          # pretend it was trained on x = s · m @ A
    s = 0.37
    A = torch.randn(H, H, dtype=torch.float64) + 3 * torch.eye(H, dtype=torch.float64)
    A_inv = torch.linalg.inv(A)
    raw = trained.fold_input_transform(s, A, A_inv)
    m = torch.randn(30, H, dtype=torch.float64) * 3
    x = s * m @ A
    torch.testing.assert_close(raw.pre_acts(m), trained.pre_acts(x))
    torch.testing.assert_close(raw.encode(m), trained.encode(x))
    z = trained.encode(x)
    torch.testing.assert_close(raw.decode(z), trained.decode(z) @ A_inv / s)
    assert raw.fit_info["whitened"] and math.isclose(raw.fit_info["input_scale"], s)
    # scale only
    raw2 = trained.fold_input_transform(2.0)
    torch.testing.assert_close(raw2.encode(m), trained.encode(2.0 * m))
    with pytest.raises(ValueError, match="both"):
        trained.fold_input_transform(1.0, A, None)


# ---- save / load ----------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    m = _model(dtype="float32")
    m.fit_info["input_scale"] = 0.5
    m.save(tmp_path / "sae")
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == ["config.json", "model.safetensors"]
    m2 = TSAE.load(tmp_path / "sae")
    assert m2.cfg == m.cfg and m2.fit_info == m.fit_info
    for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        assert torch.equal(getattr(m, k), getattr(m2, k)), k
        assert getattr(m, k).dtype == getattr(m2, k).dtype
    x = torch.randn(7, 12)
    assert torch.equal(m.encode(x), m2.encode(x))


def test_load_errors_are_clear(tmp_path):
    d = tmp_path / "sae"
    with pytest.raises(FileNotFoundError, match="config.json"):
        TSAE.load(d)
    _model(dtype="float32").save(d)
    # torn save: weights from another model
    w = load_file(str(d / "model.safetensors"))
    w["b_enc"] = w["b_enc"] + 1
    save_file(w, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="checksum"):
        TSAE.load(d)
    # wrong shapes (checksum removed, so the shape check is what fires)
    w["W_enc"] = torch.zeros(20, 11)
    save_file(w, str(d / "model.safetensors"))
    meta = json.loads((d / "config.json").read_text())
    meta.pop("weights_sha256")
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"W_enc has shape \(20, 11\)"):
        TSAE.load(d)
    del w["W_enc"]
    save_file(w, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks tensors"):
        TSAE.load(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TSAE.load(d)
    (d / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not an atoms TSAE"):
        TSAE.load(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        TSAE.load(d)
