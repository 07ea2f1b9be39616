"""Interop with SAELens and TransformerLens, on real activations of the embedded SmolLM2-135M."""
from __future__ import annotations

import json
import time
import warnings

import pytest
import torch

pytest.importorskip("sae_lens")
pytest.importorskip("transformer_lens")

from atomslib.cache import harvest_provenance  # noqa: E402
from atomslib.interop_saelens import SAELensUnits, export_saelens, load_saelens_units, units_hook_name  # noqa: E402
from atomslib.interop_saelens_train import train_saelens_jumprelu  # noqa: E402
from atomslib.interop_tlens import BridgeRecorder, boot_bridge, harvest_transformer_bridge, site_of_hook_name  # noqa: E402
from atomslib.models import tl_hook_name  # noqa: E402
from atomslib.harvesting import ActivationRecorder, harvest  # noqa: E402
from atomslib.models import ModelLoadError  # noqa: E402
from atomslib.train import train_tsae  # noqa: E402
from atomslib.tsae import TSAE, TSAEConfig  # noqa: E402
from conftest_activations import SMALL_HARVEST, no_network, small_cache, smol  # noqa: E402,F401,F811 (fixtures)

LAYER = 3


def _tiny(acts: torch.Tensor, *, n_units: int = 256, aip=None, **kw) -> TSAE:
    cfg = TSAEConfig(d_model=acts.shape[1], n_units=n_units, n_tokens=6144, batch_size=512, norm_estimate_tokens=1024,
                     log_every=10**6, **kw)
    return train_tsae(acts, cfg, aip=aip, progress=False)


def _load(folder):
    from sae_lens import SAE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # SAELens's advice about model_from_pretrained_kwargs
        return SAE.load_from_disk(folder)


@torch.no_grad()
def _compare(units: TSAE, sae, m: torch.Tensor) -> tuple[float, float]:
    ours = units(m)
    z = sae.encode(m)
    return float((z - ours.codes).abs().max()), float((sae.decode(z) - ours.m_hat).abs().max())


# ---- hook names -----------------------------------------------------------------------------------
def test_hook_names_round_trip():
    for site in ("resid_post", "mlp_in", "mlp_out"):
        assert site_of_hook_name(tl_hook_name(site, 7)) == (site, 7)
    assert tl_hook_name("resid_post", 15) == "blocks.15.hook_resid_post"
    assert site_of_hook_name("blocks.4.hook_resid_pre") == ("resid_post", 3)
    assert site_of_hook_name("blocks.2.mlp.out.hook_in") == ("mlp_in", 2)
    with pytest.raises(ValueError, match="no atoms site"):
        site_of_hook_name("blocks.3.attn.hook_z")
    with pytest.raises(ValueError, match="no atoms site"):
        site_of_hook_name("blocks.0.hook_resid_pre")     # the embedding output


# ---- export -> SAELens -> import, on real activations -------------------------------------------------
@pytest.mark.parametrize("kind", ["threshold", "relu", "whiten"])
def test_export_round_trip_on_real_activations(small_cache, tmp_path, kind):
    acts = small_cache.load(LAYER)
    kw = {"activation": "relu"} if kind == "relu" else {"whiten": True} if kind == "whiten" else {}
    units = _tiny(acts, aip=small_cache.aip(LAYER) if kind == "whiten" else None, **kw)
    assert units.fit_info["input_scale"] != 1.0                   # a normalisation was folded in
    assert units.fit_info["whitened"] == (kind == "whiten")
    units.fit_info["harvest"] = harvest_provenance(small_cache, LAYER)
    out = export_saelens(units, tmp_path / "sae")
    sae = _load(out)
    assert type(sae).__name__ == ("StandardSAE" if kind == "relu" else "JumpReLUSAE")
    assert sae.cfg.metadata.hook_name == f"blocks.{LAYER}.hook_resid_post"
    assert sae.cfg.metadata.model_name == "smollm2-135m"
    assert sae.cfg.normalize_activations == "none" and sae.cfg.apply_b_dec_to_input
    dz, dm = _compare(units, sae, acts)
    assert 1.0 < float(units(acts).l0.float().mean()) < units.cfg.n_units / 2
    scale = 1 + float(acts.abs().max())                          # float32 rounding only, no gate flips
    assert dz <= 1e-6 * scale and dm <= 1e-6 * scale, (dz, dm, scale)
    # ... and back: the imported units are the same function
    back = load_saelens_units(out)
    assert isinstance(back, TSAE) and back.cfg.activation == units.cfg.activation
    assert units_hook_name(back) == f"blocks.{LAYER}.hook_resid_post"
    torch.testing.assert_close(back(acts).m_hat, units(acts).m_hat, rtol=0, atol=1e-4)
    torch.testing.assert_close(back.dictionary(), units.dictionary(), rtol=0, atol=0)


def test_export_cli_from_run_folder(small_cache, tmp_path, capsys):
    from atomslib.cli import main

    units = _tiny(small_cache.load(LAYER)[:1024], n_units=64)
    units.save(tmp_path / "run" / "model")                          # a run folder holding the TSAE
    assert main(["export", "--format", "saelens", str(tmp_path / "run"), str(tmp_path / "out")]) == 2
    assert "hook name" in capsys.readouterr().err                   # not recorded: say how to give it
    rc = main(["export", "--format", "saelens", str(tmp_path / "run"), str(tmp_path / "out"),
               "--cache", str(small_cache.path), "--layer", str(LAYER)])
    assert rc == 0
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    assert cfg["metadata"]["context_size"] == SMALL_HARVEST["ctx_len"]
    with pytest.raises(FileExistsError, match="overwrite"):
        export_saelens(tmp_path / "run", tmp_path / "out", hook_name="blocks.3.hook_resid_post")
    export_saelens(tmp_path / "run", tmp_path / "out", hook_name="blocks.3.hook_mlp_out", overwrite=True)
    assert json.loads((tmp_path / "out" / "cfg.json").read_text())["metadata"]["hook_name"] == "blocks.3.hook_mlp_out"
    # `atoms train` records what it trained on, so `atoms export` needs no flags
    assert main(["train", str(small_cache.path), "--layer", "15", "--out", str(tmp_path / "tr"), "--units", "64",
                 "--tokens", "2048", "--batch-size", "512", "--quiet"]) == 0
    assert main(["export", "--format", "saelens", str(tmp_path / "tr"), str(tmp_path / "tr-sae")]) == 0
    meta = json.loads((tmp_path / "tr-sae" / "cfg.json").read_text())["metadata"]
    assert meta["hook_name"] == "blocks.15.hook_resid_post" and meta["model_name"] == "smollm2-135m"
    assert meta["prepend_bos"] is False                             # SmolLM2's tokenizer adds no BOS
    units.threshold.data[0] = -0.1
    with pytest.raises(ValueError, match="negative thresholds"):
        export_saelens(units, tmp_path / "neg", hook_name="blocks.3.hook_resid_post")


# ---- import of other SAELens SAEs ---------------------------------------------------------------------
def test_import_saelens_architectures(tmp_path, make_acts):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    H, N = 24, 40
    x = make_acts(300, H, dtype=torch.float32)
    torch.manual_seed(0)
    saes = {
        "topk": TopKSAE(TopKSAEConfig(d_in=H, d_sae=N, k=5)),
        "standard": StandardSAE(StandardSAEConfig(d_in=H, d_sae=N, apply_b_dec_to_input=False)),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=H, d_sae=N)),
    }
    with torch.no_grad():
        for sae in saes.values():
            for p in sae.parameters():
                p.copy_(torch.randn_like(p) * 0.3)
        saes["jumprelu"].threshold.abs_()
        saes["jumprelu"].threshold[:5] = -0.2                      # acts as 0 in SAELens
    for name, sae in saes.items():
        sae.cfg.metadata.hook_name = "blocks.2.hook_resid_post"
        sae.save_model(tmp_path / name)
        units = load_saelens_units(tmp_path / name)
        assert isinstance(units, SAELensUnits if name == "topk" else TSAE), name
        ref = _load(tmp_path / name)
        out = units(x)
        with torch.no_grad():
            z = ref.encode(x)
            torch.testing.assert_close(out.codes, z, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(out.m_hat, ref.decode(z), rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(out.codes @ units.dictionary() + units.b_dec, out.m_hat, rtol=0, atol=1e-4)
        assert units.dictionary().shape == (N, H)
        assert units.fit_info["saelens"]["architecture"] == name
    assert (saes["topk"].encode(x) != 0).sum(1).max() == 5


def test_release_names_fail_fast_offline(no_network):
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    get_pretrained_saes_directory()     # parsing SAELens's release list (~1 s, cached) is not the wait at issue
    t = time.perf_counter()
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        load_saelens_units("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
    assert time.perf_counter() - t < 5
    with pytest.raises(ValueError, match="needs sae_id"):
        load_saelens_units("gemma-scope-2b-pt-res-canonical")
    with pytest.raises(ValueError, match="did you mean"):
        load_saelens_units("gemma-scope-2b-pt-res-canonicall", "layer_12/width_16k/canonical")


# ---- SAELens's JumpReLU trainer as a kind of unit ---------------------------------------------------------
def test_train_saelens_jumprelu(small_cache):
    from atomslib.criteria import faithfulness_r2

    acts = small_cache.load(LAYER)
    H = acts.shape[1]
    units = train_saelens_jumprelu(acts, H, 128, n_tokens=16384, batch_size=256, seed=0, device="cpu",
                                     progress=False)
    assert isinstance(units, TSAE) and units.dictionary().shape == (128, H)
    with torch.no_grad():
        out = units(acts)
    l0 = float(out.l0.float().mean())
    assert 0 < l0 < 64, l0                                          # sparse, not the dense default
    assert faithfulness_r2(acts, out.m_hat) > 0.3
    assert units.fit_info["trainer"] == "sae_lens.SAETrainer" and units.fit_info["tokens"] == 16384
    # a re-iterable of batches works too (re-chunked to the batch size)
    again = train_saelens_jumprelu(small_cache.reader(LAYER, batch_size=100), H, 32, n_tokens=1024,
                                     batch_size=256, seed=0, device="cpu", progress=False)
    assert again.dictionary().shape == (32, H) and again.fit_info["steps"] == 4


# ---- TransformerLens bridge ---------------------------------------------------------------------------
def test_bridge_activations_equal_plain_hooks(smol):
    model, tok = smol
    ids = torch.randint(0, 49152, (2, 32), generator=torch.Generator().manual_seed(0))
    layers = [1, LAYER]
    bridge, hf = boot_bridge(model, tok)
    assert hf is not model and type(model.model.layers[0]).__name__ == "LlamaDecoderLayer"   # the caller's model untouched
    impl = model.config._attn_implementation
    for site in ("resid_post", "mlp_in", "mlp_out"):
        with torch.inference_mode(), BridgeRecorder(bridge, site, layers) as rec:
            got = rec(ids)
        with torch.inference_mode(), ActivationRecorder(model, site, layers) as rec:
            plain = rec(ids)                                          # Hugging Face's default attention
        try:
            model.set_attn_implementation("eager")                    # the bridge's attention kernel
            with torch.inference_mode(), ActivationRecorder(model, site, layers) as rec:
                eager = rec(ids)
        finally:
            model.set_attn_implementation(impl)
        for layer in layers:
            assert torch.equal(got[layer], eager[layer]), (site, layer)
            scale = float(plain[layer].abs().max())
            assert float((got[layer] - plain[layer]).abs().max()) <= 1e-5 * scale, (site, layer)


def test_harvest_through_bridge_writes_the_same_cache(smol, tmp_path):
    req = dict(layers=(LAYER,), site="mlp_in", tokens=256, ctx_len=64, batch_size=4, progress=False)
    model, tok = smol
    plain = harvest(smol, out=tmp_path / "hooks", **req)
    bridge, _ = boot_bridge(model, tok)                 # as a TransformerLens user would bring it
    bridged = harvest_transformer_bridge(bridge, tokenizer=tok, out=tmp_path / "bridge", **req)
    assert "backend" not in plain.manifest["request"]
    assert bridged.manifest["request"]["backend"] == "transformer_lens"
    assert bridged.manifest["d_site"] == plain.manifest["d_site"] == 1536
    assert bridged.counts(LAYER) == plain.counts(LAYER)
    a, b = plain.load(LAYER), bridged.load(LAYER)
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())
    mb, mp = bridged.moments(LAYER), plain.moments(LAYER)
    assert mb.n == mp.n
    M = mp.moment()
    assert float((mb.moment() - M).abs().max()) <= 1e-5 * float(M.abs().max())
    assert type(smol[0].model.layers[0]).__name__ == "LlamaDecoderLayer"
