"""atomslib.harvesting (the `harvest` function): content, determinism, kill-and-resume, refusals, exclusion, CLI."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from atomslib import harvesting as H
from atomslib.cache import ActivationCache, CacheError
from atomslib.harvesting import ActivationRecorder, HarvestConfig, harvest
from _disks import fill, small_disk  # noqa: F401  (fixture)
from _manifests import drop_last_shard_consistently
from conftest_activations import GEMMA, SMALL_HARVEST, gemma, small_cache, smol  # noqa: F401,F811  (fixtures)

pytestmark = pytest.mark.model

# A cheap request for the determinism / resume tests: 4 shards of 4 contexts x 64 tokens, and
# only 4 blocks to run (layers 1 and 3).
RESUME = dict(layers=(1, 3), site="resid_post", tokens=1024, ctx_len=64, batch_size=4, shard_tokens=256,
              progress=False)


@pytest.fixture(scope="module")
def reference(smol, tmp_path_factory):
    return harvest(smol, out=tmp_path_factory.mktemp("reference") / "cache", **RESUME)


def shard_digests(path: Path) -> dict[str, str]:
    return {p.name: H.hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.iterdir()) if p.suffix == ".safetensors"}


def same_cache(a: Path, b: Path) -> None:
    assert shard_digests(a) == shard_digests(b) and len(shard_digests(a)) == 5   # 4 shards + moments
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()


def test_manifest_and_contents(smol, small_cache):
    model, tok = smol
    m = small_cache.manifest
    assert m["complete"] and m["site"] == "resid_post" and m["layers"] == [3, 15]
    assert m["model"]["name"] == "smollm2-135m" and m["model"]["revision"].startswith("gguf-sha256:")
    assert m["corpus"]["name"] == "wiki-offline" and m["corpus"]["split"] == "train"
    assert (m["n_tokens"], m["n_contexts"], m["n_shards"], m["ctx_len"], m["dtype"]) == (2048, 16, 4, 128, "float32")
    assert m["library"]["atomslib"] and len(m["shards"]) == 4 and all(len(e["sha256"]) == 64 for e in m["shards"])
    for layer in (3, 15):
        c = small_cache.counts(layer)
        assert c["n_first"] == 16 and c["n_kept"] + c["n_first"] + c["n_outlier"] == 2048
    assert small_cache.d_model == 576 and small_cache.n_tokens == 2048
    # The stored rows are the hooked activations of the packed contexts, position 0 dropped. A second
    # forward is compared row by row, relative to the row's norm, not bit for bit: on an Intel CI machine
    # one full test run in three differed by up to 0.14 in an entry at block 15 (the CPU kernels' order of
    # summation is not fixed across calls, and 15 blocks amplify it); a wrong layer, site or position
    # differs by 50-60% of the row's norm (a row shifted by one token, measured).
    ids = small_cache.token_ids[:4].to(torch.int64)
    with torch.inference_mode(), ActivationRecorder(model, "resid_post", [3, 15]) as rec:
        acts = rec(ids)
    for layer in (3, 15):
        want = acts[layer][:, 1:].reshape(-1, 576)
        got = small_cache.load(layer, max_tokens=want.shape[0])
        assert got.shape == want.shape and got.dtype == want.dtype
        rel = (got.double() - want.double()).norm(dim=1) / want.double().norm(dim=1)
        assert float(rel.max()) < 1e-2, f"layer {layer}: a stored row differs from the forward by {float(rel.max()):.2g} of its norm"
    # The AIP moment saved during the harvest is the moment of the stored rows.
    x = small_cache.load(15).double()
    torch.testing.assert_close(small_cache.moments(15).moment(), x.T @ x / x.shape[0])
    aip = small_cache.aip(15, ridge=1e-6)
    assert aip.H == 576 and aip.n_tokens == small_cache.n_kept(15)


def test_deterministic_and_complete_cache_is_reused(smol, small_cache, reference, tmp_path, monkeypatch):
    again = harvest(smol, out=tmp_path / "again", **RESUME)
    same_cache(reference.path, again.path)
    # A complete cache of the same request comes back without loading the model or recomputing.
    monkeypatch.setattr("atomslib.models.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(H, "_Run", lambda *a, **k: pytest.fail("recomputed"))
    reused = harvest("smollm2-135m", out=small_cache.path, **SMALL_HARVEST)
    assert reused.path == small_cache.path
    import atomslib
    import atomslib.harvesting  # noqa: F401  (the module's name is not the function's: nothing rebinds it)
    assert callable(atomslib.harvest) and not isinstance(atomslib.harvest, type(atomslib))
    assert atomslib.harvest(out=small_cache.path, **SMALL_HARVEST).path == small_cache.path


def test_interrupt_and_resume_gives_identical_bytes(smol, reference, tmp_path):
    out = tmp_path / "resumed"

    def stop_after_two(i, n):
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        harvest(smol, out=out, on_shard=stop_after_two, **RESUME)
    assert len(json.loads((out / "manifest.json").read_text())["shards"]) == 2
    with pytest.raises(CacheError, match="incomplete.*resume"):
        ActivationCache(out)
    ran = []
    harvest(smol, out=out, on_shard=lambda i, n: ran.append(i), **RESUME)
    assert ran == [2, 3]                      # only the missing shards were computed
    same_cache(reference.path, out)

    # A crash between a shard and its moment checkpoint: the moments are rebuilt from the shards.
    out2 = tmp_path / "resumed2"
    with pytest.raises(KeyboardInterrupt):
        harvest(smol, out=out2, on_shard=stop_after_two, **RESUME)
    (out2 / "moments.safetensors").write_bytes(b"garbage")
    (out2 / "shard-00002.safetensors").write_bytes(b"half-written shard that no manifest lists")
    harvest(smol, out=out2, **RESUME)
    same_cache(reference.path, out2)


def test_sigkill_and_resume_gives_identical_bytes(smol, reference, tmp_path):
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal
        from atomslib.harvesting import harvest
        kw = {RESUME!r}
        def die(i, n):
            if i == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        harvest(out={str(out)!r}, on_shard=die, **kw)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert r.returncode == -9, r.stderr.decode()[-2000:]
    assert len(json.loads((out / "manifest.json").read_text())["shards"]) == 3
    harvest(smol, out=out, **RESUME)
    same_cache(reference.path, out)


def test_refusals(smol, small_cache, tmp_path, monkeypatch):
    with pytest.raises(CacheError, match=r"another request \(differs in site\).*resume=False"):
        harvest(smol, out=small_cache.path, **{**SMALL_HARVEST, "site": "mlp_in"})
    with pytest.raises(CacheError, match="site is 'resid_post', expected 'mlp_out'"):
        ActivationCache(small_cache.path, expect={"site": "mlp_out"})
    with pytest.raises(ValueError, match=r"layer 40 is out of range.*n_layers=30"):
        harvest(smol, layers=(3, 40), tokens=128, out=tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="site='resid'"):
        harvest(smol, site="resid", tokens=128, out=tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="dtype='int8'"):
        HarvestConfig(dtype="int8")
    with pytest.raises(ValueError, match="outlier_ratio"):
        HarvestConfig(outlier_ratio=0.5)
    with pytest.raises(ValueError, match="tokens must be a positive int"):
        HarvestConfig(tokens=0)
    with pytest.raises(ValueError, match="tokenizer"):
        harvest(smol[0], tokens=128, out=tmp_path / "x")
    monkeypatch.setattr("shutil.disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(CacheError, match=r"needs about 5.4 MiB, and 2.6 MiB more are kept free as a margin .* free; "
                                         r"lower tokens="):
        harvest(smol, layers=(1,), tokens=128, out=tmp_path / "full", progress=False)
    assert not (tmp_path / "full").exists()                 # a refused harvest leaves no folder behind


def test_outliers_float16_and_keep_first(smol, tmp_path):
    cache = harvest(smol, layers=(0, 15), tokens=512, out=tmp_path / "o", batch_size=4, dtype="float16",
                    exclude_first=False, outlier_ratio=3.0, progress=False)
    m = cache.manifest
    for layer in (0, 15):
        c = cache.counts(layer)
        assert c["n_first"] == 0 and c["n_kept"] + c["n_outlier"] == 512
        x = cache.load(layer)
        assert x.dtype == torch.float32 and x.shape == (c["n_kept"], 576)
    # Position 0 (the sink, ~150x the median at layer 15) is caught as an outlier there.
    from safetensors.torch import load_file
    shard = load_file(str(cache.path / m["shards"][0]["file"]))
    assert shard["acts.15"].dtype == torch.float16
    out15 = shard["outliers.15"].to(torch.int64)
    assert set(range(0, 4 * 128, 128)) <= set((out15).tolist())
    assert cache.counts(15)["n_outlier"] >= 4
    assert cache.moments(15).n_excluded == cache.counts(15)["n_outlier"]


def test_select_rule():
    T = 4
    x = torch.ones(8, 3)
    x[0] *= 1000        # position 0 of context 0 (sink)
    x[6] *= 60          # an outlier at position 2 of context 1
    keep, outl, med = H._select(x, T, exclude_first=True, ratio=50.0)
    assert keep.tolist() == [False, True, True, True, False, True, False, True]
    assert outl.nonzero().flatten().tolist() == [6] and float(med) == pytest.approx(3 ** 0.5)
    keep, outl, _ = H._select(x, T, exclude_first=False, ratio=None)
    assert keep.all() and not outl.any()


def test_recording_backends_are_registered_and_a_plugin_loads_on_first_use(monkeypatch):
    from atomslib import recorder as R
    model = torch.nn.Linear(2, 2)
    assert R.get_backend("hooks").prepare(model, None, copy_model=True) == (model, ActivationRecorder)
    assert R.get_backend("hooks").unwrap(model) is None
    with pytest.raises(ValueError, match=r"backend='nope' is not known; use 'hooks' or 'transformer_lens'$"):
        harvest(model, backend="nope")
    monkeypatch.setattr(R, "_BACKENDS", dict(R._BACKENDS))
    R.register_backend("toy", lambda m, tok, *, copy_model: (m, ActivationRecorder))
    assert sorted(R.backend_names()) == ["hooks", "toy", "transformer_lens"] and R.backend_names()[0] == "hooks"
    assert R.get_backend("toy").unwrap(model) is None
    # The TransformerLens backend: its module registers it when `harvest(backend=...)` first asks for it.
    code = ("import sys; from atomslib.recorder import get_backend; assert 'atomslib.interop_tlens' not in sys.modules; "
            "b = get_backend('transformer_lens'); from atomslib import interop_tlens as T; "
            "assert b.prepare is T.bridge_backend; w = type('W', (), {'original_model': 1})(); "
            "assert b.unwrap(w) == 1 and b.unwrap(object()) is None; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == "ok", out.stderr


def test_mlp_in_site_and_cli(smol, tmp_path, monkeypatch, capsys):
    from atomslib.cli import main

    monkeypatch.setattr("atomslib.models.load_model", lambda *a, **k: smol)
    out = tmp_path / "cli"
    rc = main(["harvest", "--layers", "2", "--site", "mlp_in", "--tokens", "256", "--batch-size", "2",
               "--out", str(out), "--quiet", "--split", "heldout", "--outlier-ratio", "none"])
    assert rc == 0 and capsys.readouterr().out.strip() == str(out)
    cache = ActivationCache(out)
    assert cache.d_model == 1536 and cache.site == "mlp_in" and cache.manifest["corpus"]["split"] == "heldout"
    assert cache.n_kept(2) == 254 and cache.manifest["request"]["outlier_ratio"] is None
    rc = main(["harvest", "--layers", "2,99", "--tokens", "128", "--out", str(tmp_path / "bad"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "layers: layer 99 is out of range: smollm2-135m has n_layers=30" in err and "\n" == err[-1:]


# ---- repair, concurrent runs, full disks, leftovers ---------------------------------------------------
CLI_RESUME = ["harvest", "--layers", "1,3", "--tokens", "1024", "--ctx-len", "64", "--batch-size", "4",
              "--shard-tokens", "256", "--quiet"]          # RESUME on the command line


def test_rerun_repairs_a_deleted_or_flipped_shard(smol, reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "damaged"
    shutil.copytree(reference.path, out)
    (out / "shard-00001.safetensors").unlink()
    p = out / "shard-00002.safetensors"
    data = bytearray(p.read_bytes())
    data[-100] ^= 0xFF                                    # one flipped byte, same size
    p.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"shard-00001.safetensors is missing: repair it with `atoms cache repair "):
        ActivationCache(out)
    ran = []
    harvest(smol, out=out, on_shard=lambda i, n: ran.append(i), **RESUME)   # the same harvest, run again
    assert ran == [1, 2]                                  # only the damaged shards were harvested again
    same_cache(reference.path, out)
    # A damaged moment checkpoint is rebuilt from the shards, bit-identically, without a forward pass.
    (out / "moments.safetensors").write_bytes(b"garbage")
    ran.clear()
    harvest(smol, out=out, on_shard=lambda i, n: ran.append(i), **RESUME)
    assert ran == []
    same_cache(reference.path, out)
    # `atoms cache verify|repair DIR`: the request comes from the manifest.
    from atomslib.cli import main
    monkeypatch.setattr("atomslib.models.load_model", lambda *a, **k: smol)
    (out / "shard-00003.safetensors").unlink()
    capsys.readouterr()
    assert main(["cache", "verify", str(out)]) == 1
    assert "shard-00003.safetensors is missing" in capsys.readouterr().err
    assert main(["cache", "repair", str(out), "--quiet"]) == 0
    same_cache(reference.path, out)
    assert main(["cache", "verify", str(out)]) == 0 and "intact" in capsys.readouterr().out


def test_two_harvests_into_one_folder_one_refused_one_waits(reference, tmp_path):
    out, started, go = tmp_path / "shared", tmp_path / "started", tmp_path / "go"
    script = textwrap.dedent(f"""
        import pathlib, time
        from atomslib.harvesting import harvest
        def pause(i, n):                      # hold the folder until the test says go
            if i == 0:
                pathlib.Path({str(started)!r}).touch()
                while not pathlib.Path({str(go)!r}).exists():
                    time.sleep(0.05)
        harvest(out={str(out)!r}, on_shard=pause, **{RESUME!r})
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cli = [sys.executable, "-m", "atomslib.cli", *CLI_RESUME, "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    waiter = None
    try:
        t0 = time.monotonic()
        while not started.exists():
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            assert time.monotonic() - t0 < 300
            time.sleep(0.1)
        other = subprocess.run(cli + ["--seed", "1"], env=env, capture_output=True, text=True, timeout=300)
        assert other.returncode == 2, other.stderr[-2000:]
        assert f"is in use by PID {first.pid}" in other.stderr and "--wait" in other.stderr
        assert "Traceback" not in other.stderr
        log = tmp_path / "waiter.err"
        with open(log, "w") as err:
            waiter = subprocess.Popen(cli + ["--wait"], env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        t0 = time.monotonic()
        while f"waiting for PID {first.pid}" not in log.read_text():
            assert waiter.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() - t0 < 300
            time.sleep(0.1)
        go.touch()
        assert first.wait(300) == 0
        assert waiter.wait(300) == 0, log.read_text()[-2000:]
        assert waiter.stdout.read().strip() == str(out)
    finally:
        for p in (first, waiter):
            if p is not None and p.poll() is None:
                p.kill()
    same_cache(reference.path, out)                       # the survivor is valid: the first run's cache
    assert ActivationCache(out).validate().manifest["request"]["seed"] == 0


def test_sigint_is_a_message_and_the_harvest_resumes(smol, reference, tmp_path):
    # A real SIGINT (Ctrl-C) to `atoms harvest` after its second shard: exit 130, a one-line
    # message, the shards written so far kept; the same command then finishes byte-identically.
    out = tmp_path / "ctrl-c"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from atomslib import harvesting as H
        from atomslib.cli import main
        # A shell that starts the tests in the background (`make test &`) hands its children SIGINT
        # ignored, and Python then installs no handler: restore Ctrl-C's, as a terminal would give it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        add = H.add_shard
        def add_then_interrupt(accs, xs, entry):
            add(accs, xs, entry)
            if entry["file"] == "shard-00001.safetensors":
                os.kill(os.getpid(), signal.SIGINT)
        H.add_shard = add_then_interrupt
        sys.exit(main({[*CLI_RESUME, "--out", str(out)]!r}))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stderr[-2000:]
    assert "interrupted; completed work is kept" in r.stderr and "Traceback" not in r.stderr
    assert 1 <= len(json.loads((out / "manifest.json").read_text())["shards"]) <= 2
    harvest(smol, out=out, **RESUME)
    same_cache(reference.path, out)


def test_full_disk_is_a_message_and_the_harvest_resumes(smol, reference, small_disk, tmp_path, monkeypatch, capsys):
    from atomslib.cli import main
    monkeypatch.setattr("atomslib.models.load_model", lambda *a, **k: smol)
    out = (small_disk or tmp_path) / "cache"
    write, filled = H.atomic_write_bytes, []

    def fill_before_third_shard(path, data):
        if Path(path).name == "shard-00002.safetensors" and not filled:
            if small_disk is not None:
                filled.append(fill(small_disk))            # the disk fills up for real: ENOSPC from the kernel
            else:
                filled.append(None)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write(path, data)

    monkeypatch.setattr(H, "atomic_write_bytes", fill_before_third_shard)
    assert main([*CLI_RESUME, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{out / 'shard-00002.safetensors'}: no space left on the device" in err and "run the same command" in err
    assert len(json.loads((out / "manifest.json").read_text())["shards"]) == 2    # the work done is kept
    assert not list(out.glob(".*.tmp"))
    if filled[0] is not None:
        filled[0].unlink()
    monkeypatch.setattr(H, "atomic_write_bytes", write)
    assert main([*CLI_RESUME, "--out", str(out)]) == 0
    same_cache(reference.path, out)


def test_last_layer_minus_one_is_normalised_once(smol, tmp_path, monkeypatch):
    kw = dict(tokens=128, ctx_len=64, batch_size=2, progress=False)
    cache = harvest(smol, layers=(-1,), out=tmp_path / "last", **kw)
    assert cache.manifest["request"]["layers"] == cache.manifest["layers"] == [29]
    monkeypatch.setattr(H, "_Run", lambda *a, **k: pytest.fail("recomputed"))
    assert harvest(smol, layers=(29,), out=tmp_path / "last", **kw).path == cache.path   # the same request
    assert harvest(smol, layers=[-1], out=tmp_path / "last", **kw).path == cache.path
    # Fractions and names resolve to absolute blocks: 1.0 is the last block, the same request and cache;
    # "late" is block 24 of 30, another request.
    assert harvest(smol, layers=1.0, out=tmp_path / "last", **kw).path == cache.path
    with pytest.raises(CacheError, match=r"another request \(differs in layers\)"):
        harvest(smol, layers="late", out=tmp_path / "last", **kw)
    from atomslib.models import resolve_layers   # what the notebooks call: the same normalisation
    assert resolve_layers([-1, 3]) == [3, 29] and resolve_layers(-2) == [28] and resolve_layers("middle") == [15]
    with pytest.raises(ValueError, match="layer -31 is out of range"):
        resolve_layers([-31])


def test_stale_temporaries_are_removed_by_the_next_run(smol, reference, tmp_path):
    out = tmp_path / "tmpfiles"
    shutil.copytree(reference.path, out)
    stale = [out / ".manifest.json.k3j_9x2a.tmp", out / ".shard-00001.safetensors.abcdefgh.tmp"]
    for p in stale:
        p.write_bytes(b"half-written by a run that was killed")
    mine = out / ".notes.tmp"                               # not the temporary of an atomic write
    mine.write_text("keep")
    harvest(smol, out=out, **RESUME)
    assert not any(p.exists() for p in stale) and mine.exists()
    assert not (out / ".atoms.lock").exists()               # the lock goes with its run


def test_a_complete_cache_on_a_read_only_disk_is_still_reused(smol, reference, small_disk):
    from atomslib.lock import OutputDirError
    if small_disk is None:
        pytest.skip("needs a tmpfs mount (root)")
    shutil.copytree(reference.path, small_disk / "c")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert harvest(smol, out=small_disk / "c", **RESUME).path == small_disk / "c"     # nothing to write
    with pytest.raises(OutputDirError, match=r"other is on a read-only file system"):
        harvest(smol, out=small_disk / "other", **RESUME)


# ---- Gemma 3 270M: the same guarantees on the second embedded model ---------------------------------
# Small: 8 contexts x 32 tokens (BOS first), 4 shards of 2 contexts, layers early and middle (3 and 9 of 18).
GEMMA_RESUME = dict(layers=("early", "middle"), site="resid_post", tokens=256, ctx_len=32, batch_size=2,
                    shard_tokens=64, progress=False)


def test_gemma_harvest_is_deterministic_and_a_killed_one_resumes_identically(gemma, tmp_path):
    model, tok = gemma
    ref = harvest(gemma, out=tmp_path / "ref", **GEMMA_RESUME)
    m = ref.manifest
    assert m["model"]["name"] == GEMMA and m["model"]["architecture"] == "Gemma3ForCausalLM"
    assert m["request"]["layers"] == m["layers"] == [3, 9] and m["request"]["model"] == GEMMA
    assert (m["d_site"], m["n_shards"], m["n_tokens"]) == (640, 4, 256)
    assert bool((ref.token_ids[:, 0] == tok.bos_token_id).all())        # Gemma's BOS opens every context
    assert ref.counts(9) == {"n_first": 8, "n_kept": 256 - 8, "n_outlier": 0}
    # The stored rows are the hooked activations (position 0 dropped).
    with torch.inference_mode(), ActivationRecorder(model, "resid_post", [3, 9]) as rec:
        acts = rec(ref.token_ids[:2].to(torch.int64))
    torch.testing.assert_close(ref.load(9, max_tokens=62), acts[9][:, 1:].reshape(-1, 640), rtol=0, atol=0)
    again = harvest(gemma, out=tmp_path / "again", **GEMMA_RESUME)
    same_cache(ref.path, again.path)

    # SIGKILL after the third shard, in another process that loads the model by name; then resume here.
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal
        from atomslib.harvesting import harvest
        def die(i, n):
            if i == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        harvest({GEMMA!r}, out={str(out)!r}, on_shard=die, **{GEMMA_RESUME!r})
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=600)
    assert r.returncode == -9, r.stderr.decode()[-2000:]
    assert len(json.loads((out / "manifest.json").read_text())["shards"]) == 3
    ran = []
    harvest(gemma, out=out, on_shard=lambda i, n: ran.append(i), **{**GEMMA_RESUME, "layers": [3, 9]})
    assert ran == [3]                                                  # only the missing shard was computed
    same_cache(ref.path, out)


def test_every_harvest_default_lives_in_one_place():
    """harvest()'s keyword defaults are the ones HarvestConfig records, the ones `atoms harvest` offers
    (its parser is built from them) and the ones the TransformerLens bridge passes on (issue 13)."""
    import argparse
    import dataclasses
    import inspect

    from atomslib.harvesting import HarvestConfig, configure_harvest_parser, harvest_defaults
    from atomslib.interop_tlens import harvest_transformer_bridge

    d = harvest_defaults()
    fields = {f.name: f.default for f in dataclasses.fields(HarvestConfig) if f.name in d}
    # model_dtype: the config records what was used (float32 when harvest() leaves the model as loaded)
    assert {k: v for k, v in fields.items() if k != "model_dtype"} == {k: d[k] for k in fields if k != "model_dtype"}
    p = argparse.ArgumentParser()
    configure_harvest_parser(p)
    cli = vars(p.parse_args([]))
    assert cli["layers"] == ",".join(map(str, d["layers"]))
    for name in ("model", "site", "tokens", "corpus", "split", "ctx_len", "batch_size", "dtype", "model_dtype",
                 "device", "seed", "shard_tokens", "backend", "outlier_ratio"):
        assert cli[name] == d[name], name
    bridge = {k: v.default for k, v in inspect.signature(harvest_transformer_bridge).parameters.items()
              if v.default is not inspect.Parameter.empty}
    assert {k: bridge[k] for k in bridge if k in d} == {k: d[k] for k in bridge if k in d}


def test_a_manifest_edited_to_agree_with_itself_is_repaired_by_a_rerun(smol, reference, tmp_path, monkeypatch, capsys):
    """The audit's edit (the last shard dropped from the manifest, every total set to match) passed as
    intact: the same harvest run again returned it, and `atoms cache repair` said "intact (3 shards)".
    Now both see the request, the moments and the unlisted shard disagree, and repair it."""
    from atomslib.cli import main

    out = tmp_path / "edited"
    shutil.copytree(reference.path, out)
    drop_last_shard_consistently(out)
    ran = []
    harvest(smol, out=out, on_shard=lambda i, n: ran.append(i), **RESUME)   # the same harvest, run again
    assert ran == [3]
    same_cache(reference.path, out)
    monkeypatch.setattr("atomslib.models.load_model", lambda *a, **k: smol)
    drop_last_shard_consistently(out)
    capsys.readouterr()
    assert main(["cache", "repair", str(out), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "repaired (the manifest lists no shard-00003.safetensors" in said and "harvested again 1 shard(s) (256 " \
        "tokens); now intact (4 shards)" in said
    same_cache(reference.path, out)
    # With the request edited too, the repair cannot know which is right: refused, naming the fix in flags.
    drop_last_shard_consistently(out, edit_request=True)
    assert main(["cache", "repair", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"`atoms harvest ... --out {out} --no-resume`" in err and "resume=False" not in err
    # A shard file the request does not make, beside an intact manifest: refused on opening, and by a rerun.
    shutil.rmtree(out)
    shutil.copytree(reference.path, out)
    shutil.copy(out / "shard-00001.safetensors", out / "shard-00007.safetensors")
    with pytest.raises(CacheError, match="shard-00007.safetensors is in the folder but the manifest does not list it"):
        ActivationCache(out)
    with pytest.raises(CacheError, match=r"holds shard-00007.safetensors, shard files this request does not make "
                                         r"\(it makes 4\).*resume=False"):
        harvest(smol, out=out, **RESUME)




def test_repair_summaries_say_what_was_repaired(smol, reference, tmp_path, monkeypatch, capsys):
    """A repair that rewrote only the manifest and moments printed "0 tokens ... 0 tok/s"; a one-shard repair
    printed a rate over 256 tokens. Now each says what it repaired, and `atoms cache repair` says so too."""
    from atomslib.cli import main

    out = tmp_path / "damaged"
    shutil.copytree(reference.path, out)
    monkeypatch.setattr("atomslib.models.load_model", lambda *a, **k: smol)
    (out / "moments.safetensors").write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["cache", "repair", str(out)]) == 0
    said = capsys.readouterr()
    summary = [ln for ln in said.err.splitlines() if ln.startswith("atoms harvest:")][-1]   # after the progress bar
    assert "rewrote the manifest and the moments from the intact shards; no shard needed harvesting" in summary
    assert "0 tokens" not in summary and "tok/s" not in summary
    assert "repaired (" in said.out and "moments.safetensors is missing, damaged" in said.out
    assert "rewrote the manifest and the moments from the intact shards; now intact (4 shards)" in said.out
    (out / "shard-00002.safetensors").unlink()
    assert main(["cache", "repair", str(out)]) == 0
    said = capsys.readouterr()
    summary = [ln for ln in said.err.splitlines() if ln.startswith("atoms harvest:")][-1]
    assert "harvested again 1 shard(s) (2; 256 tokens)" in summary and "tok/s" not in summary
    assert "harvested again 1 shard(s) (256 tokens); now intact (4 shards)" in said.out
    assert main(["cache", "repair", str(out)]) == 0
    assert "intact, nothing to repair (4 shards)" in capsys.readouterr().out
    same_cache(reference.path, out)
