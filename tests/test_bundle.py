"""atomslib.bundle: `atoms bundle` / `atoms unbundle` for a machine without network. A round trip on a
small fake model (chunks, a licence file, a wheel) and on the real SmolLM2 GGUF; a corrupt, truncated
or missing piece refused in one line before anything is installed; the bundle's own unbundle.py run
without atomslib on the path."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from atomslib import assets, bundle as bundle_mod
from atomslib.bundle import MANIFEST, SCRIPT, BundleError, bundle, check_pieces, unbundle

CHUNK_BYTES = (2500, 1800)
PIECE = 1000


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """An embedded model "fake-model" of two chunks and a licence file, installed under tmp/src-assets
    (found there through ATOMS_ASSETS, as a `pip install --target` folder is). Returns {install path: bytes}."""
    src = tmp_path / "src-assets"
    data = {f"fake_part{i + 1}/data/fake.gguf.part{i:02d}": os.urandom(n) for i, n in enumerate(CHUNK_BYTES)}
    data["fake_meta/data/LICENCE.txt"] = b"the fake model's licence\n"
    for rel, b in data.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b)
    chunks = [k for k in data if ".part" in k]
    spec = assets.EmbeddedModel(
        name="fake-model", gguf="fake.gguf", env="ATOMS_FAKE_GGUF", sha256=_sha(b"".join(data[k] for k in chunks)),
        parts=tuple(assets.AssetFile(f"fake-part{i + 1}==1.0", k, len(data[k]), _sha(data[k])) for i, k in enumerate(chunks)),
        extra=(assets.AssetFile("fake-meta==1.0", "fake_meta/data/LICENCE.txt"),))
    monkeypatch.setitem(assets.EMBEDDED, "fake-model", spec)
    monkeypatch.setenv(assets.ASSETS_ENV, str(src))
    return data


@pytest.fixture
def fake_bundle(tmp_path, fake_model):
    wheels = tmp_path / "wheels-src"
    wheels.mkdir()
    (wheels / "tiny_pkg-1.0-py3-none-any.whl").write_bytes(os.urandom(1500))
    bundle(tmp_path / "bundle", models=["fake-model"], corpus=False, wheels=wheels, piece_bytes=PIECE, progress=False)
    return tmp_path / "bundle"


def test_round_trip_of_a_fake_model_in_pieces(tmp_path, fake_model, fake_bundle, monkeypatch):
    manifest = json.loads((fake_bundle / MANIFEST).read_text())
    files = {f["path"]: f for f in manifest["files"]}
    assert set(files) == {*fake_model, "tiny_pkg-1.0-py3-none-any.whl"}
    for f in manifest["files"]:
        assert sum(p["size"] for p in f["pieces"]) == f["size"]
        assert len(f["pieces"]) == -(-f["size"] // PIECE)                  # at most PIECE bytes each
        for p in f["pieces"]:
            piece = (fake_bundle / p["file"]).read_bytes()
            assert len(piece) == p["size"] <= PIECE and _sha(piece) == p["sha256"]
    assert files["fake_part1/data/fake.gguf.part00"]["sha256"] == _sha(fake_model["fake_part1/data/fake.gguf.part00"])
    assert (fake_bundle / SCRIPT).read_text() == Path(bundle_mod.__file__).read_text()

    dest, wheel_dir = tmp_path / "node-assets", tmp_path / "node-wheels"
    used = unbundle(fake_bundle, assets=dest, wheel_dir=wheel_dir, pip=False, progress=False)
    assert used == {"model": dest, "wheel": wheel_dir}
    for rel, data in fake_model.items():
        assert (dest / rel).read_bytes() == data
    assert (wheel_dir / "tiny_pkg-1.0-py3-none-any.whl").stat().st_size == 1500
    assert not list(dest.rglob(".*.partial"))
    # atomslib finds the installed model there, and the chunks assemble to the pinned GGUF
    monkeypatch.setenv(assets.ASSETS_ENV, str(dest))
    loc = assets.locate("fake-model")
    assert all(dest in p.parents for p in loc.parts) and [p.name for p in loc.extra] == ["LICENCE.txt"]
    assert assets.assemble(loc, tmp_path / "fake.gguf") == assets.EMBEDDED["fake-model"].sha256


def test_the_wheels_are_installed_offline_from_the_bundle(fake_bundle, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bundle_mod.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    unbundle(fake_bundle, assets=tmp_path / "a", wheel_dir=tmp_path / "w", progress=False)
    (cmd,) = calls
    assert cmd[1:5] == ["-m", "pip", "install", "--no-index"] and cmd[-1] == str(tmp_path / "w" / "tiny_pkg-1.0-py3-none-any.whl")


def _piece_of(folder: Path, path_part: str, k: int = 0) -> Path:
    f = next(f for f in json.loads((folder / MANIFEST).read_text())["files"] if path_part in f["path"])
    return folder / f["pieces"][k]["file"]


def test_a_corrupt_piece_is_refused_and_nothing_is_installed(fake_bundle, tmp_path):
    piece = _piece_of(fake_bundle, "part01", 1)
    data = bytearray(piece.read_bytes())
    data[10] ^= 0xFF
    piece.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{piece} is corrupt \(sha256 \w+\.\.\., expected \w+\.\.\.\): piece 2 of 2 "
                                          rf"of fake_part2/data/fake.gguf.part01 \(model fake-model\); copy it again"):
        unbundle(fake_bundle, assets=tmp_path / "dest", pip=False, progress=False)
    assert not (tmp_path / "dest").exists()          # every piece is checked before anything is written


def test_a_missing_or_truncated_piece_is_named(fake_bundle, tmp_path):
    piece = _piece_of(fake_bundle, "part00", 2)
    piece.write_bytes(piece.read_bytes()[:-1])
    with pytest.raises(BundleError, match=rf"{piece} is truncated or damaged \(\d+ bytes, expected \d+\): piece 3 of 3 of "
                                          rf"fake_part1/data/fake.gguf.part00"):
        check_pieces(fake_bundle)
    piece.unlink()
    with pytest.raises(BundleError, match=rf"{piece} is missing: piece 3 of 3 of fake_part1/data/fake.gguf.part00 "
                                          rf"\(model fake-model\); copy it again"):
        unbundle(fake_bundle, assets=tmp_path / "dest", pip=False, progress=False)
    assert not (tmp_path / "dest").exists()
    (fake_bundle / MANIFEST).unlink()
    with pytest.raises(BundleError, match=r"manifest.json is missing: .* is not a bundle made by `atoms bundle`"):
        check_pieces(fake_bundle)


def test_atoms_unbundle_names_a_missing_piece_in_one_line(fake_bundle, tmp_path):
    piece = _piece_of(fake_bundle, "LICENCE")
    piece.unlink()
    p = subprocess.run([sys.executable, "-m", "atomslib.cli", "unbundle", str(fake_bundle), "--assets",
                        str(tmp_path / "dest"), "--no-pip"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert p.stderr.startswith(f"atoms unbundle: error: {piece} is missing: piece 1 of 1 of fake_meta/data/LICENCE.txt")


def test_the_bundles_own_script_runs_without_atomslib(fake_bundle, fake_model, tmp_path):
    """`python unbundle.py` on a node where atomslib is not installed yet: `-S` leaves site-packages (and
    so the installed atomslib) off the path, and the script runs from another folder."""
    dest = tmp_path / "dest"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "-S", str(fake_bundle / SCRIPT), "--assets", str(dest), "--no-pip"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "set ATOMS_ASSETS=" in p.stdout
    for rel, data in fake_model.items():
        assert (dest / rel).read_bytes() == data
    _piece_of(fake_bundle, "part00").unlink()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith(f"{SCRIPT}: error: ") and "is missing" in p.stderr


def test_bundle_refuses_a_non_empty_folder_and_a_missing_model(tmp_path, fake_model, monkeypatch):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(BundleError, match="exists and is not an empty folder"):
        bundle(tmp_path / "full", models=["fake-model"], corpus=False, progress=False)
    (tmp_path / "src-assets" / "fake_part2" / "data" / "fake.gguf.part01").unlink()
    with pytest.raises(assets.ModelLoadError, match=r"fake-model: 1 of its 2 chunks \(fake.gguf.part01\) not found"):
        bundle(tmp_path / "new", models=["fake-model"], corpus=False, progress=False)
    with pytest.raises(BundleError, match=r"--wheels .*: no \*.whl files there"):
        bundle(tmp_path / "new2", models=[], corpus=False, wheels=tmp_path, progress=False)


def test_round_trip_of_the_real_smollm2_gguf_and_the_corpus(tmp_path):
    if not assets.installed("smollm2-135m"):
        pytest.skip("the embedded SmolLM2 is not installed (make install)")
    from atomslib.corpus import wiki_offline_path

    original = assets.locate("smollm2-135m").parts[0]
    manifest = json.loads(bundle(tmp_path / "b", models=["smollm2-135m"], progress=False).read_text())
    gguf = next(f for f in manifest["files"] if f["kind"] == "model")
    assert gguf["size"] == original.stat().st_size and len(gguf["pieces"]) == 2      # 98 MB in 50 MB pieces
    assert max(p["size"] for p in gguf["pieces"]) <= 50_000_000
    used = unbundle(tmp_path / "b", assets=tmp_path / "a", site=tmp_path / "site", progress=False)
    installed = tmp_path / "a" / gguf["path"]
    assert bundle_mod._sha256(installed) == bundle_mod._sha256(original) == gguf["sha256"]
    corpus = next(f for f in manifest["files"] if f["kind"] == "corpus")
    assert (used["corpus"] / corpus["path"]).read_bytes() == wiki_offline_path().read_bytes()


def test_atoms_bundle_then_unbundle_on_the_command_line(tmp_path, fake_model, capsys):
    from atomslib import cli

    out = tmp_path / "cli-bundle"
    assert cli.main(["bundle", str(out), "--models", "fake-model", "--no-corpus", "--piece-mb", "0.001"]) == 0
    assert f"atoms unbundle {out}" in capsys.readouterr().out
    assert max(p.stat().st_size for p in (out / "pieces").iterdir()) <= 1000
    assert cli.main(["unbundle", str(out), "--assets", str(tmp_path / "dest")]) == 0
    assert "model -> " in capsys.readouterr().out
    assert all((tmp_path / "dest" / rel).read_bytes() == data for rel, data in fake_model.items())
