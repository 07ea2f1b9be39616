"""atomslib.cli: every error a user can fix is a one-line message naming the path and the fix (no
traceback; `atoms --debug` shows it), and output folders are checked before any compute."""
from __future__ import annotations

import re
import textwrap

import pytest

from _disks import read_only_dir  # noqa: F401  (fixture)
from _notebooks import notebook_md, write_project
from atomslib.cli import main

TINY = notebook_md("""
```{code-cell} ipython3
:tags: [parameters]

x = 1
results_dir = "results"
```
""")


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def no_model(monkeypatch):
    monkeypatch.setattr("atomslib.models.load_model", lambda *a, **k: pytest.fail("the model was loaded"))


@pytest.fixture
def project(tmp_path):
    return write_project(tmp_path / "proj", {"01_tiny": TINY}, {"default": "common: {x: 1}\n"})


def test_out_that_is_a_file(tmp_path, no_model, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    assert main(["harvest", "--tokens", "128", "--out", str(a_file), "--quiet"]) == 2
    err = one_line(capsys)
    assert f"{a_file} is an existing file, not a folder; pass a folder path" in err
    with pytest.raises(ValueError, match="is an existing file"):          # --debug: the traceback
        main(["--debug", "harvest", "--tokens", "128", "--out", str(a_file), "--quiet"])
    with pytest.raises(ValueError, match="is an existing file"):
        main(["harvest", "--debug", "--tokens", "128", "--out", str(a_file), "--quiet"])


def test_read_only_output_folders_fail_before_any_compute(read_only_dir, tmp_path, project, no_model, capsys):
    why = "(read-only file system|permission denied)"
    out = read_only_dir / "x"
    assert main(["harvest", "--tokens", "128", "--out", str(out), "--quiet"]) == 2
    err = one_line(capsys)
    assert str(out) in err and "GiB" not in err                          # not "0.00 GiB free"
    assert re.search(why, err)
    assert main(["export", str(tmp_path / "no-such-tsae"), str(out)]) == 2   # checked before reading SAVED
    assert str(out) in one_line(capsys)
    assert main(["run", "01_tiny", "--root", str(project), "--out", str(out)]) == 2   # before a kernel starts
    err = one_line(capsys)
    assert str(out) in err and re.search(why, err)


def test_malformed_profile_yaml_is_a_message(project, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("common:\n  x: [1, 2\nnotebooks: {}\n")
    assert main(["run", "01_tiny", "--root", str(project), "--profile", str(bad)]) == 2
    err = one_line(capsys)
    assert f"profile {bad} is not valid YAML at line" in err and "fix that line" in err


@pytest.mark.parametrize("argv, option", [
    (["harvest", "--outlier-ratio", "abc"], "--outlier-ratio"),
    (["harvest", "--device", "tpu9"], "--device"),
    (["train", "cache", "--layer", "3", "--out", "o", "--device", "tpu9"], "--device"),
    (["harvest", "--wait", "soon"], "--wait"),
    # 0 or "" would be read as "not set" (--units 0 trained the default 4H units): each is refused
    (["train", "cache", "--layer", "3", "--out", "o", "--units", "0"], "--units"),
    (["train", "cache", "--layer", "3", "--out", "o", "--tokens", "0"], "--tokens"),
    (["train", "cache", "--layer", "3", "--out", "o", "--max-tokens", "0"], "--max-tokens"),
    (["train", "cache", "--layer", "3", "--out", "o", "--epochs", "0"], "--epochs"),
    (["train", "cache", "--layer", "3", "--out", ""], "--out"),
    (["harvest", "--tokens", "0"], "--tokens"),
    (["harvest", "--shard-tokens", "0"], "--shard-tokens"),
    (["harvest", "--out", ""], "--out"),
    (["harvest", "--model", ""], "--model"),
    (["harvest", "--outlier-ratio", "0"], "--outlier-ratio"),
    (["run", "--all", "--jobs", "0"], "--jobs"),
    (["run", "--all", "--out", ""], "--out"),
    (["run", "--all", "--model", ""], "--model"),
    (["cache", "verify", ""], "DIR"),
])
def test_bad_option_values_name_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: " in err and "Traceback" not in err


def test_unexpected_errors_keep_their_traceback():
    from atomslib.cli import describe_error
    assert describe_error(KeyError("x")) is None                          # a bug: shown as a traceback
    assert describe_error(OSError(28, "No space left on device", "/d/f")) == (
        "/d/f: no space left on the device: free some space or pass another output folder, then run the same "
        "command again (completed work is kept and it resumes)")
    assert "check the path" in describe_error(FileNotFoundError(2, "No such file or directory", "/nope"))
    assert describe_error(ValueError("tokens must be positive")) == "tokens must be positive"


def test_profile_yaml_error_outside_a_run(tmp_path):
    from atomslib.book.project import load_profile
    bad = tmp_path / "p.yaml"
    bad.write_text(textwrap.dedent("""\
        common:
          x: 1
         y: 2
        """))
    with pytest.raises(ValueError, match=r"p.yaml is not valid YAML at line 3"):
        load_profile(bad)


def test_cli_messages_name_flags_and_refused_runs_leave_no_folder(tmp_path, no_model, monkeypatch, capsys):
    """What an `atoms` command prints names its flags (`--no-resume`, `--tokens`), not the library's keywords
    (`resume=False`, `tokens=`); the free-space check runs before the model loads; a refused run (a full disk,
    an unknown model, --device cuda without a GPU, a too-long path) leaves no folder behind."""
    import json
    import shutil

    held = tmp_path / "held"
    held.mkdir()
    (held / "manifest.json").write_text(json.dumps({"format": "atoms.activations", "request": {"tokens": 1}}))
    assert main(["harvest", "--tokens", "128", "--out", str(held), "--quiet"]) == 2
    err = one_line(capsys)
    assert "already holds a harvest of another request" in err and "pass another --out, or --no-resume" in err
    assert "resume=False" not in err and "out=" not in err
    free = shutil.disk_usage(tmp_path).free
    monkeypatch.setattr("shutil.disk_usage", lambda p: shutil._ntuple_diskusage(free, 0, 1 << 20))
    assert main(["harvest", "--tokens", "2048", "--out", str(tmp_path / "full" / "acts"), "--quiet"]) == 2
    err = one_line(capsys)                                   # no_model: the check ran before any load
    assert "lower --tokens, pass --dtype float16 or fewer --layers, or another --out" in err and "tokens=" not in err
    assert "more are kept free as a margin" in err
    monkeypatch.undo()                                       # the real load: it refuses the name at once
    assert main(["harvest", "--model", "no-such-model", "--out", str(tmp_path / "unknown" / "acts")]) == 2
    assert "model name 'no-such-model' is not an embedded model" in one_line(capsys)
    long = tmp_path / "deep" / ("x" * 300) / "acts"
    assert main(["harvest", "--out", str(long)]) == 2
    assert "is too long" in (err := one_line(capsys)) and "pass a shorter path" in err
    import torch
    if not torch.cuda.is_available():
        assert main(["harvest", "--device", "cuda", "--out", str(tmp_path / "gpu" / "acts")]) == 2
        err = one_line(capsys)
        assert "--device cuda was requested but torch sees no GPU here; use --device cpu" in err
        assert "device='cpu'" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held"]     # no folder a refused run created


def test_train_from_a_regular_file_suggests_what_works(tmp_path, capsys):
    a_file = tmp_path / "acts.safetensors"
    a_file.write_bytes(b"not a cache")
    assert main(["train", str(a_file), "--layer", "3", "--out", str(tmp_path / "units")]) == 2
    err = one_line(capsys)
    assert f"{a_file} is a file, not an activation cache folder; pass the folder that `atoms harvest --out` wrote" in err
    assert f"--out {a_file}" not in err
    assert not (tmp_path / "units").exists()


def test_run_help_lists_the_executors(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--executor {local,ray}" in out and "local or ray" in out
