"""What a run needs, for a machine without network (a cluster's GPU node): `atoms bundle OUT` packs
it, `atoms unbundle DIR` (or `python DIR/unbundle.py` where atomslib is not installed yet) puts it
back in place.

The bundle is a folder:

- `pieces/`: every file cut into pieces of at most `piece_bytes` (50 MB by default), each with its sha256;
- `manifest.json`: for every file its kind, its install path, size and sha256 and its pieces in order;
- `unbundle.py`: a copy of this module (standard library only), which reassembles the pieces.

What it holds: the embedded models' installed files (`atomslib.assets.EMBEDDED`: the GGUF or its chunks,
and the licence texts installed with them), the default corpus's text (`atomslib.corpus`), and, when
asked, Python wheels: `--wheels DIR` packs the `*.whl` in DIR (fetched elsewhere, e.g. `pip download
-r requirements.lock -d DIR` plus a CUDA build of torch), `--download-wheels` runs that `pip download`
here first.

Unbundling checks every piece (present, its size, its sha256) before it writes anything, so a missing
or corrupt piece is named in one line and nothing is half installed; then it writes each file
(temporary name, whole-file sha256 checked, renamed into place): the models where `atomslib.assets`
looks (`$ATOMS_ASSETS`, else `<sys.prefix>/atoms-assets`; `--assets DIR` names another folder, then
set `ATOMS_ASSETS=DIR`), the corpus under site-packages (`--site DIR`), the wheels into a folder that
`pip install --no-index` installs from. A run on the node then reads only local files.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

__all__ = ["BundleError", "PIECE_BYTES", "MANIFEST", "SCRIPT", "bundle", "unbundle", "check_pieces"]

PIECE_BYTES = 50_000_000   # at most 50 MB per piece (also under 50 MiB)
MANIFEST = "manifest.json"
SCRIPT = "unbundle.py"
ASSETS_ENV = "ATOMS_ASSETS"   # atomslib.assets.ASSETS_ENV; repeated because unbundle.py runs without atomslib
_FORMAT = 1
_BLOCK = 1 << 22
KINDS = ("model", "corpus", "wheel")


class BundleError(ValueError):
    """A bundle cannot be made or unpacked; the message names the file or piece and the fix."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(_BLOCK):
            h.update(b)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Packing (needs atomslib)

def _model_files(names) -> list[dict]:
    """The installed files of the embedded models `names`: (source path, install path under the
    assets folder), found by `atomslib.assets.locate` (sizes checked)."""
    from .assets import embedded_spec, locate

    out = []
    for name in names:
        spec = embedded_spec(name)
        loc = locate(name)
        if loc.override:
            raise BundleError(f"{name}: {spec.env} names a GGUF outside the installed wheels; unset it to bundle the "
                              f"installed files (atoms bundle packs what `make install` installed)")
        found = {str(p): f for p, f in zip(loc.parts, spec.parts)}
        for p in loc.extra:   # the licence texts: their install path is the tail of theirs that matches
            found.update({str(p): f for f in spec.extra if str(p).endswith(f.path)})
        out += [{"kind": "model", "name": name, "package": f.package, "path": f.path, "src": src}
                for src, f in found.items()]
    return out


def _corpus_files() -> list[dict]:
    from .corpus import WIKI_OFFLINE, wiki_offline_path

    p = wiki_offline_path()
    package_dir = p.parents[1]     # <site-packages>/<package>/data/<file>
    return [{"kind": "corpus", "name": WIKI_OFFLINE, "package": package_dir.name,
             "path": p.relative_to(package_dir.parent).as_posix(), "src": str(p)}]


def _download_wheels(dest: Path, requirements: Path) -> Path:
    if not requirements.is_file():
        raise BundleError(f"--download-wheels reads {requirements}, which does not exist; run it from the checkout, "
                          f"or fetch the wheels yourself and pass --wheels DIR")
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-d", str(dest), "-r", str(requirements)]
    if subprocess.run(cmd).returncode != 0:
        raise BundleError(f"`{' '.join(cmd)}` failed (see pip's output above); fetch the wheels where the package "
                          f"index is reachable and pass --wheels DIR")
    return dest


def bundle(out: str | os.PathLike, *, models=None, corpus: bool = True, wheels: str | os.PathLike | None = None,
           download_wheels: bool = False, piece_bytes: int = PIECE_BYTES, progress: bool = True) -> Path:
    """Pack into the folder `out` (created; must be empty if it exists) what a run needs offline: the
    embedded models `models` (default: every one in `atomslib.assets.EMBEDDED`), the corpus (`corpus`),
    the `*.whl` files of the folder `wheels` (and, with `download_wheels`, those `pip download -r
    requirements.lock` fetches). Returns the manifest's path."""
    from .assets import EMBEDDED

    if not (isinstance(piece_bytes, int) and piece_bytes >= 1):
        raise BundleError(f"piece_bytes must be a positive int (bytes per piece), got {piece_bytes!r}")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} exists and is not an empty folder; pass a new folder to `atoms bundle`")
    names = list(EMBEDDED) if models is None else list(models)
    files = _model_files(names) + (_corpus_files() if corpus else [])
    (out / "pieces").mkdir(parents=True, exist_ok=True)
    wheel_dirs = [Path(wheels).expanduser()] if wheels else []
    if download_wheels:
        root = Path(__file__).resolve().parents[1]
        wheel_dirs.append(_download_wheels(out / ".download", root / "requirements.lock"))
    for d in wheel_dirs:
        found = sorted(d.glob("*.whl")) if d.is_dir() else []
        if not found:
            raise BundleError(f"--wheels {d}: no *.whl files there; fill it with `pip download -d {d} ...` first")
        files += [{"kind": "wheel", "name": p.name, "package": p.name.split("-")[0], "path": p.name, "src": str(p)}
                  for p in found]
    entries = []
    for i, f in enumerate(files):
        src = Path(f.pop("src"))
        entry = {**f, "size": src.stat().st_size, "sha256": None, "pieces": []}
        whole = hashlib.sha256()
        with open(src, "rb") as fin:
            k = 0
            while True:
                piece_name = f"pieces/{i:03d}-{Path(f['path']).name}.{k:03d}"
                h, size = hashlib.sha256(), 0
                with open(out / piece_name, "wb") as fout:
                    while size < piece_bytes and (b := fin.read(min(_BLOCK, piece_bytes - size))):
                        h.update(b)
                        whole.update(b)
                        fout.write(b)
                        size += len(b)
                if size == 0 and k > 0:          # the previous piece ended the file exactly
                    (out / piece_name).unlink()
                    break
                entry["pieces"].append({"file": piece_name, "size": size, "sha256": h.hexdigest()})
                k += 1
                if size < piece_bytes:
                    break
        entry["sha256"] = whole.hexdigest()
        entries.append(entry)
        if progress:
            print(f"atoms bundle: {f['kind']} {f['path']}: {entry['size']:,} bytes in {len(entry['pieces'])} piece(s)",
                  file=sys.stderr)
    shutil.rmtree(out / ".download", ignore_errors=True)
    shutil.copyfile(__file__, out / SCRIPT)
    from . import __version__
    manifest = {"format": _FORMAT, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "atomslib_version": __version__, "piece_bytes": piece_bytes, "files": entries}
    _write_atomically(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    return out / MANIFEST


# ----------------------------------------------------------------------------------------------
# Unpacking (standard library only: this file is the bundle's unbundle.py)

def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} is missing: {folder} is not a bundle made by `atoms bundle` (or was copied "
                          f"without it); copy the whole folder") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"{path} is unreadable ({e}); copy it again from where the bundle was made") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT or not isinstance(manifest.get("files"), list):
        raise BundleError(f"{path} is not a bundle manifest of format {_FORMAT}; make the bundle again with this "
                          f"version of atoms")
    return manifest


def check_pieces(folder: str | os.PathLike) -> dict:
    """Every piece of the bundle at `folder` present, of its size and sha256 (read once); returns the
    manifest. Raises `BundleError` naming the first missing or corrupt piece and the file it belongs to."""
    folder = Path(folder).expanduser()
    manifest = _read_manifest(folder)
    for f in manifest["files"]:
        if f.get("kind") not in KINDS or ".." in Path(f["path"]).parts or Path(f["path"]).is_absolute():
            raise BundleError(f"{folder / MANIFEST}: entry {f.get('path')!r} is not a file a bundle installs; "
                              f"make the bundle again")
        for i, piece in enumerate(f["pieces"]):
            if not str(piece.get("file", "")).startswith("pieces/") or ".." in Path(piece["file"]).parts:
                raise BundleError(f"{folder / MANIFEST}: piece {piece.get('file')!r} is outside pieces/; make the bundle again")
            p = folder / piece["file"]
            what = f"piece {i + 1} of {len(f['pieces'])} of {f['path']} ({f['kind']} {f['name']})"
            if not p.is_file():
                raise BundleError(f"{p} is missing: {what}; copy it again from where the bundle was made")
            if p.stat().st_size != piece["size"]:
                raise BundleError(f"{p} is truncated or damaged ({p.stat().st_size} bytes, expected {piece['size']}): "
                                  f"{what}; copy it again from where the bundle was made")
            digest = _sha256(p)
            if digest != piece["sha256"]:
                raise BundleError(f"{p} is corrupt (sha256 {digest[:12]}..., expected {piece['sha256'][:12]}...): "
                                  f"{what}; copy it again from where the bundle was made")
    return manifest


def _write_atomically(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)


def _assemble(folder: Path, f: dict, dest: Path) -> None:
    """The pieces of `f` in order into `dest` (a temporary name, then renamed), the whole sha256 checked."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp, h = dest.with_name(f".{dest.name}.partial"), hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for piece in f["pieces"]:
                with open(folder / piece["file"], "rb") as fin:
                    while b := fin.read(_BLOCK):
                        h.update(b)
                        out.write(b)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != f["sha256"]:
            raise BundleError(f"{f['path']} reassembled has sha256 {h.hexdigest()[:12]}..., expected {f['sha256'][:12]}... "
                              f"(its pieces changed while being read?); run the unbundle again")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def default_assets_root() -> Path:
    """Where `atomslib.assets` looks first for the models' files: `$ATOMS_ASSETS`, else `<sys.prefix>/atoms-assets`."""
    env = os.environ.get(ASSETS_ENV)
    return Path(env).expanduser() if env else Path(sys.prefix) / "atoms-assets"


def unbundle(folder: str | os.PathLike, *, assets: str | os.PathLike | None = None, site: str | os.PathLike | None = None,
             wheel_dir: str | os.PathLike | None = None, pip: bool = True, progress: bool = True) -> dict[str, Path]:
    """Check every piece of the bundle at `folder`, then install its files: models under `assets`
    (default `default_assets_root()`), the corpus under `site` (default this Python's site-packages),
    wheels into `wheel_dir` (default `<folder>/wheels`) and, with `pip`, `pip install --no-index` of them.
    Returns {kind: the folder it went to}."""
    folder = Path(folder).expanduser()
    manifest = check_pieces(folder)     # all of them first: a missing piece leaves nothing half installed
    roots = {"model": Path(assets).expanduser() if assets else default_assets_root(),
             "corpus": Path(site).expanduser() if site else Path(sysconfig.get_paths()["purelib"]),
             "wheel": Path(wheel_dir).expanduser() if wheel_dir else folder / "wheels"}
    for f in manifest["files"]:
        _assemble(folder, f, roots[f["kind"]] / f["path"])
        if progress:
            print(f"unbundle: {f['kind']} {f['name']}: {roots[f['kind']] / f['path']}", file=sys.stderr)
    wheels = [roots["wheel"] / f["path"] for f in manifest["files"] if f["kind"] == "wheel"]
    if wheels and pip:
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(roots["wheel"]),
               *map(str, wheels)]
        if subprocess.run(cmd).returncode != 0:
            raise BundleError(f"`{' '.join(cmd)}` failed (see pip's output above): a wheel this Python needs is not "
                              f"in the bundle; add it with `atoms bundle --wheels DIR` where the index is reachable")
    used = {kind: roots[kind] for kind in KINDS if any(f["kind"] == kind for f in manifest["files"])}
    _check_installed(manifest, used.get("model"))
    return used


def _check_installed(manifest: dict, assets_root: Path | None) -> None:
    """Where atomslib is importable: each bundled model found by `atomslib.assets.locate` (with the
    assets folder used here first on its path, as `ATOMS_ASSETS` would put it)."""
    names = sorted({f["name"] for f in manifest["files"] if f["kind"] == "model"})
    if not names:
        return
    try:
        assets_mod = importlib.import_module("atomslib.assets")
    except ImportError:   # the standalone script before atomslib is installed: the sha256 checks stand
        return
    old = os.environ.get(ASSETS_ENV)
    os.environ[ASSETS_ENV] = str(assets_root)
    try:
        for name in names:
            assets_mod.locate(name)
    finally:
        if old is None:
            del os.environ[ASSETS_ENV]
        else:
            os.environ[ASSETS_ENV] = old


# ----------------------------------------------------------------------------------------------
# Command line: `atoms bundle`, `atoms unbundle`, `python unbundle.py`

def configure_bundle_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a new (or empty) folder to write the bundle into")
    p.add_argument("--models", default=None, help="comma-separated embedded models (default: all of them)")
    p.add_argument("--no-corpus", action="store_true", help="leave out the default corpus (wiki-offline)")
    p.add_argument("--wheels", metavar="DIR", help="also pack the *.whl files of DIR (the Python packages the node lacks)")
    p.add_argument("--download-wheels", action="store_true",
                   help="first `pip download -r requirements.lock` (needs the package index), and pack those wheels")
    p.add_argument("--piece-mb", type=float, default=PIECE_BYTES / 1e6, help="largest piece in MB (default 50)")


def cli_bundle(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    path = bundle(args.out, models=models, corpus=not args.no_corpus, wheels=args.wheels,
                  download_wheels=args.download_wheels, piece_bytes=int(args.piece_mb * 1e6))
    print(f"bundle written: {path.parent} (copy the folder to the node, then `atoms unbundle {path.parent}`, or "
          f"`python {path.parent / SCRIPT}` where atomslib is not installed yet)")
    return 0


def configure_unbundle_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", nargs="?", default=None, help="the bundle folder (unbundle.py: its own folder)")
    p.add_argument("--assets", metavar="DIR", help=f"install the models' files here (default ${ASSETS_ENV}, else "
                   "<sys.prefix>/atoms-assets); then set ATOMS_ASSETS=DIR for the runs")
    p.add_argument("--site", metavar="DIR", help="install the corpus here (default this Python's site-packages)")
    p.add_argument("--wheel-dir", metavar="DIR", help="reassemble the wheels here (default <bundle>/wheels)")
    p.add_argument("--no-pip", action="store_true", help="reassemble the wheels but do not pip install them")


def cli_unbundle(args: argparse.Namespace) -> int:
    if args.folder is None:
        raise BundleError("name the bundle folder: atoms unbundle DIR")
    folder = Path(args.folder)
    used = unbundle(folder, assets=args.assets, site=args.site, wheel_dir=args.wheel_dir, pip=not args.no_pip)
    print("unbundled, every sha256 checked: " + "; ".join(f"{k} -> {v}" for k, v in used.items()))
    if args.assets and Path(args.assets).expanduser().resolve() != default_assets_root().resolve():
        print(f"set {ASSETS_ENV}={Path(args.assets).expanduser().resolve()} for the runs (atomslib looks there first)")
    return 0


def _script_main(argv: list[str] | None = None) -> int:
    """`python unbundle.py [FOLDER] [options]`: `atoms unbundle` without atomslib installed."""
    p = argparse.ArgumentParser(prog=SCRIPT, description="Check and install an atoms bundle (atoms unbundle).")
    configure_unbundle_parser(p)
    p.set_defaults(folder=str(Path(__file__).resolve().parent))   # the bundle this script came in
    try:
        return cli_unbundle(p.parse_args(argv))
    except (BundleError, OSError) as e:
        print(f"{SCRIPT}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_script_main())
