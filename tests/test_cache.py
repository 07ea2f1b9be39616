"""atomslib.cache: streaming readers, contexts, and detection of damaged caches."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from atomslib.cache import ActivationCache, ActivationReader, CacheError
from _manifests import drop_last_shard_consistently as drop_last_shard
from conftest_activations import small_cache, smol  # noqa: F401,F811  (fixtures)

pytestmark = pytest.mark.model


def test_reader_streams_in_order(small_cache):
    full = small_cache.load(3)
    assert full.shape == (small_cache.n_kept(3), 576) and full.dtype == torch.float32
    r = small_cache.reader(3, batch_size=300)
    assert isinstance(r, ActivationReader) and len(r) == -(-full.shape[0] // 300)
    batches = list(r)
    assert [b.shape[0] for b in batches[:-1]] == [300] * (len(batches) - 1)
    assert torch.equal(torch.cat(batches), full)
    assert torch.equal(torch.cat(list(r)), full)                       # re-iterable
    assert torch.equal(torch.cat(list(small_cache.reader(3, max_tokens=700, batch_size=256))), full[:700])
    half = torch.cat(list(small_cache.reader(3, dtype=torch.float16)))
    assert half.dtype == torch.float16


def test_reader_shuffle_is_deterministic_permutation(small_cache):
    full = small_cache.load(15)
    a = small_cache.reader(15, batch_size=512, shuffle=True, seed=1, buffer_shards=2)
    b = small_cache.reader(15, batch_size=512, shuffle=True, seed=1, buffer_shards=2)
    ea, eb = torch.cat(list(a)), torch.cat(list(b))
    assert torch.equal(ea, eb) and not torch.equal(ea, full)
    assert torch.allclose(ea.double().sum(0), full.double().sum(0))
    assert torch.equal(torch.sort(ea[:, 0]).values, torch.sort(full[:, 0]).values)
    assert not torch.equal(torch.cat(list(a)), ea)                     # the next epoch reshuffles
    c = small_cache.reader(15, batch_size=512, shuffle=True, seed=2)
    assert not torch.equal(torch.cat(list(c)), ea)
    sub = torch.cat(list(small_cache.reader(15, shuffle=True, max_tokens=600)))
    assert torch.equal(torch.sort(sub[:, 0]).values, torch.sort(full[:600, 0]).values)


def test_locate_tokens_and_contexts(small_cache, smol):
    _, tok = smol
    rows = torch.tensor([0, 126, 127, 500, small_cache.n_kept(3) - 1])
    ctx, pos = small_cache.locate(3, rows)
    assert ctx.tolist()[:3] == [0, 0, 1] and pos.tolist()[:3] == [1, 127, 1]     # position 0 never stored
    ids = small_cache.tokens(3, rows)
    assert torch.equal(ids, small_cache.token_ids[ctx, pos].long())
    cs = small_cache.contexts(3, rows, before=5, after=2, tokenizer=tok)
    assert len(cs) == 5
    for c, i in zip(cs, ids.tolist()):
        assert c.tokens[c.focus] == tok.decode([i]) and len(c.tokens) <= 8
        assert c.doc_id >= 0 and "[[" in c.text()
    assert small_cache.token_ids.shape == (16, 128) and small_cache.doc_ids.shape == (16, 128)
    with pytest.raises(ValueError, match="rows must lie in"):
        small_cache.locate(3, [10**9])


def test_validate_and_unknown_layer(small_cache):
    assert small_cache.validate() is small_cache
    with pytest.raises(CacheError, match=r"layer 7 is not in this cache; it holds layers \[3, 15\]"):
        small_cache.reader(7)
    with pytest.raises(CacheError, match="not an activation cache"):
        ActivationCache(small_cache.path / "nowhere")


@pytest.fixture
def copy(small_cache, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(small_cache.path, dst)
    return dst


def test_corrupted_shard_is_refused(copy):
    p = copy / "shard-00001.safetensors"
    data = bytearray(p.read_bytes())
    data[-100] ^= 0xFF                                               # one flipped byte, same size
    p.write_bytes(bytes(data))
    cache = ActivationCache(copy)                                      # opening is cheap: sizes only
    with pytest.raises(CacheError, match="shard-00001.safetensors is corrupt.*sha256"):
        list(cache.reader(3))
    with pytest.raises(CacheError, match="corrupt"):
        ActivationCache(copy).validate()


def test_truncated_or_missing_shard_is_refused(copy):
    p = copy / "shard-00002.safetensors"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(CacheError, match="truncated"):
        ActivationCache(copy)
    p.unlink()
    with pytest.raises(CacheError, match="missing"):
        ActivationCache(copy)


def test_bad_manifest_is_refused(copy):
    mf = copy / "manifest.json"
    m = json.loads(mf.read_text())
    mf.write_text(json.dumps({**m, "version": 99}))
    with pytest.raises(CacheError, match="not a atoms.activations v1 manifest"):
        ActivationCache(copy)
    mf.write_text("{ not json")
    with pytest.raises(CacheError, match="unreadable or corrupt"):
        ActivationCache(copy)


def test_non_finite_activations_are_refused(copy):
    from safetensors.torch import load_file, save

    mf = copy / "manifest.json"
    m = json.loads(mf.read_text())
    entry = m["shards"][0]
    t = load_file(str(copy / entry["file"]))
    t["acts.15"][5, 3] = float("nan")
    data = save(t)
    (copy / entry["file"]).write_bytes(data)
    entry.update(bytes=len(data), sha256=__import__("hashlib").sha256(data).hexdigest())   # a "valid" file of NaNs
    mf.write_text(json.dumps(m))
    cache = ActivationCache(copy)
    assert cache.load(3).shape[0] == cache.n_kept(3)                 # the other layer is fine
    with pytest.raises(CacheError, match="NaN/inf activations at layer 15"):
        cache.load(15)


def test_manifest_that_disagrees_with_its_shards_is_refused_on_open(copy, capsys):
    mf = copy / "manifest.json"
    good = json.loads(mf.read_text())

    def edited(**change):
        m = json.loads(json.dumps(good))
        for k, v in change.items():
            if k == "drop_shard":
                del m["shards"][v]
            elif k == "request_ctx_len":
                m["request"]["ctx_len"] = v
            else:
                m[k] = v
        mf.write_text(json.dumps(m))

    for change, why in [({"drop_shard": 1}, "it lists 3 shards but n_shards is 4"),
                        ({"n_tokens": 4096}, "n_tokens is 4096"),
                        ({"ctx_len": 64}, "ctx_len is 64 but the request's is 128"),
                        ({"request_ctx_len": 64, "ctx_len": 64}, "n_tokens is 2048 but n_contexts x ctx_len is 1024")]:
        edited(**change)
        with pytest.raises(CacheError, match=f"disagrees with its own shard list: {why}.*atoms cache repair"):
            ActivationCache(copy)                       # opening checks (cheap): no load, no reader, no training
    edited(drop_shard=1)
    from atomslib.cli import main
    assert main(["train", str(copy), "--layer", "3", "--out", str(copy.parent / "t"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "disagrees with its own shard list" in err and "Traceback" not in err
    mf.write_text(json.dumps(good))
    assert ActivationCache(copy).validate().n_tokens == 2048


def drop_last_shard_consistently(folder, *, edit_request: bool = False) -> dict:
    """The audit's edit (tests/_manifests.py), checked: the cache checks see what it did."""
    m = drop_last_shard(folder, edit_request=edit_request)
    from atomslib.cache_checks import manifest_problems
    assert edit_request or manifest_problems(m) == [f"it holds 12 contexts but its request (tokens=2048, ctx_len=128) "
                                                    f"makes 16", "n_shards is 3 but 16 contexts at 4 per shard make 4"]
    assert not edit_request or manifest_problems(m) == []
    return m


def test_a_manifest_edited_to_agree_with_itself_is_refused(copy, capsys):
    """Dropping the last shard and fixing every total to match passed every check: the request, the
    moments' token counts and the shard files in the folder now disagree, on opening, in `atoms cache
    verify`, and before `atoms train` reads a row (which leaves no output folder behind)."""
    from atomslib.cache_repair import verify
    from atomslib.cli import main

    good = (copy / "manifest.json").read_text()
    for edit_request, why in [(False, r"it holds 12 contexts but its request \(tokens=2048, ctx_len=128\) makes 16"),
                              (True, r"shard-00003.safetensors is in the folder but the manifest does not list it")]:
        (copy / "manifest.json").write_text(good)
        drop_last_shard_consistently(copy, edit_request=edit_request)
        with pytest.raises(CacheError, match=why + r".*atoms cache repair"):
            ActivationCache(copy)
        probs = verify(copy)
        assert any(__import__("re").search(why, p) for p in probs)
        if edit_request:
            assert any("moments.safetensors was accumulated over 4 shards but the manifest lists 3" in p for p in probs)
            assert any("moments.safetensors counts 2032 tokens at layer 3 but the manifest's shards hold 1524" in p
                       for p in probs)
        capsys.readouterr()
        assert main(["cache", "verify", str(copy)]) == 1
        out = capsys.readouterr()
        assert "problem(s); repair with `atoms cache repair" in out.out and __import__("re").search(why, out.err)
        train_out = copy.parent / "units" / "l3"
        assert main(["train", str(copy), "--layer", "3", "--out", str(train_out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "disagrees with its own shard list" in err and "Traceback" not in err
        assert not (copy.parent / "units").exists()             # a refused training leaves no folder
    (copy / "manifest.json").write_text(good)
    assert ActivationCache(copy).validate().n_tokens == 2048


# ---------------------------------------------------------------------------------------------
# Readers and writers of one cache folder; --wait in every command that locks one.

ENV = {**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[1])}
WRITER = ("import pathlib, sys, time\nfrom atomslib.lock import hold\n"
          "with hold(sys.argv[1], 'atoms harvest', name=sys.argv[3]):\n    print('held', flush=True)\n"
          "    while not pathlib.Path(sys.argv[2]).exists():\n        time.sleep(0.05)\n")
READER = ("import pathlib, sys, time\nfrom atomslib.cache import ActivationCache\ncache = ActivationCache(sys.argv[1])\n"
          "print('held', flush=True)\nwhile not pathlib.Path(sys.argv[2]).exists():\n    time.sleep(0.05)\n")


def start(code: str, *args) -> "subprocess.Popen":
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def atoms(*argv, **kw):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "atomslib.cli", *map(str, argv)], env=ENV, capture_output=True,
                          text=True, timeout=300, **kw)


def test_a_harvest_or_repair_does_not_pull_a_cache_from_under_its_readers(copy, smol, tmp_path, monkeypatch):
    """`atoms harvest --no-resume` into a cache another process reads deleted its shards (the reader then died
    with "shard ... is missing: repair it"): now it stops naming the reader's PID, or waits for it."""
    import math
    import time

    from atomslib.cache_repair import repair
    from atomslib.harvesting import harvest
    from atomslib.lock import FolderLocked
    from conftest_activations import SMALL_HARVEST

    done = tmp_path / "reader-done"
    reader = start(READER, copy, done)
    try:
        shards = sorted(p.name for p in copy.glob("shard-*"))
        r = atoms("harvest", "--layers", "3,15", "--tokens", "2048", "--batch-size", "4", "--shard-tokens", "512",
                  "--out", copy, "--no-resume", "--quiet")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"{copy} is being read by PID {reader.pid} (python -c" in r.stderr and "--wait SECONDS" in r.stderr
        assert sorted(p.name for p in copy.glob("shard-*")) == shards
        assert ActivationCache(copy).validate().n_tokens == 2048        # other readers go on
        monkeypatch.setattr("atomslib.models.load_model", lambda *a, **k: smol)
        p = copy / "shard-00002.safetensors"                             # damaged while the reader reads
        data = bytearray(p.read_bytes())
        data[-100] ^= 0xFF
        p.write_bytes(bytes(data))
        with pytest.raises(FolderLocked, match=rf"is being read by PID {reader.pid} .*atoms harvest would change"):
            repair(copy, progress=False)
        t0 = time.monotonic()
        import threading
        threading.Timer(1.0, done.touch).start()
        fresh = harvest(smol, out=copy, resume=False, wait=math.inf, **SMALL_HARVEST)   # waits for the reader
        assert time.monotonic() - t0 > 0.9 and reader.wait(30) == 0
        assert fresh.validate().n_tokens == 2048
    finally:
        done.touch()
        reader.kill()
        reader.wait()


@pytest.mark.parametrize("command", ["harvest", "train", "cache verify", "cache repair", "run"])
def test_wait_in_every_command(command, copy, tmp_path):
    """Each command that locks a folder stops at once naming the process that holds it (`atoms cache verify` on a
    folder a harvest is writing says so, not "repair it"), or, with --wait, waits for it and then works."""
    import time

    from test_run import make_project

    locked, name, argv = copy, ".atoms.lock", []
    if command == "harvest":
        argv = ["harvest", "--layers", "3,15", "--tokens", "2048", "--batch-size", "4", "--shard-tokens", "512",
                "--out", copy, "--quiet"]
    elif command == "train":
        argv = ["train", copy, "--layer", "3", "--out", tmp_path / "units", "--units", "16", "--tokens", "512",
                "--batch-size", "256", "--quiet"]
    elif command.startswith("cache"):
        argv = [*command.split(), copy] + (["--quiet"] if command == "cache repair" else [])
    else:
        project = make_project(tmp_path / "proj")
        locked, name = tmp_path / "book", ".01_tiny.lock"
        argv = ["run", "01_tiny", "--root", project, "--out", locked]
    go = tmp_path / "go"
    writer = start(WRITER, locked, go, name)
    try:
        r = atoms(*argv)
        assert r.returncode != 0 and f"is in use by PID {writer.pid} (atoms harvest, since" in r.stderr, r.stderr
        assert "--wait SECONDS" in r.stderr and "Traceback" not in r.stderr and "repair" not in r.stderr
        assert not (tmp_path / "units").exists()                          # a refused training leaves no folder
        err = tmp_path / "err"
        with open(err, "w") as f:
            waiter = __import__("subprocess").Popen([__import__("sys").executable, "-m", "atomslib.cli",
                                                     *map(str, argv), "--wait"], env=ENV, stdout=f, stderr=f)
        t0 = time.monotonic()
        while f"waiting for PID {writer.pid}" not in err.read_text():
            assert waiter.poll() is None, err.read_text()[-2000:]
            assert time.monotonic() - t0 < 120
            time.sleep(0.1)
        go.touch()
        assert waiter.wait(300) == 0, err.read_text()[-3000:]
    finally:
        go.touch()
        writer.kill()
        writer.wait()
    said = err.read_text()
    assert {"harvest": str(copy), "train": "done:", "cache verify": "intact", "cache repair": "intact, nothing to repair",
            "run": "01_tiny: ok"}[command] in said
    if command == "run":
        assert (locked / "01_tiny.ipynb").is_file()                        # executed, not only listed
