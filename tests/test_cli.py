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
