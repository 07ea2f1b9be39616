"""atomslib.book.run (with its project, tasks and results modules): profiles, parameters, run keys, papermill runs, failures, executors, results files.

Uses tiny throwaway notebooks in tmp_path (a kernel start is the slow part: about six in all).
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile
import sys
import textwrap
from pathlib import Path

import pytest

from _notebooks import notebook_md, output_files, summary_statuses, write_project
from atomslib import cli
from atomslib.book import run as run_module
from atomslib.book.project import load_profile, parse_assignments, read_notebook
from atomslib.book.results import (CLAIMS_BY_ID, claim, claims_table, conclusion_summary, evaluate_claims, fmt,
                                   save_results, validate_results)
from atomslib.book.run import Executor, NotebookFailed, get_executor, register_executor, run_all, run_notebook
from atomslib.book.tasks import TaskResult, resolve_params, run_key

TINY = notebook_md("""
# Tiny

```{code-cell} ipython3
:tags: [parameters]

x = 1
fail = False
profile = "default"
results_dir = "results"
figures_dir = "figures"
```

```{code-cell} ipython3
from atomslib.book.results import claim, notebook_params, save_results
PARAMS = notebook_params(globals())
```

```{code-cell} ipython3
save_results("01_tiny", PARAMS, {"double": 2 * x}, [claim("atoms.r2", 0.25 * x, "R2=euclid", "heldout")])
```

```{code-cell} ipython3
y = 1 / (0 if fail else 1)  # fails on demand, after the results were written
```
""")

BROKEN = notebook_md("""
```{code-cell} ipython3
:tags: [parameters]

results_dir = "results"
```

```{code-cell} ipython3
z = {}["missing key"]
```
""")


PROFILES = {
    "default": textwrap.dedent("""\
        description: base
        common: {x: 1, seed: 0, results_dir: results, figures_dir: figures, cache_dir: null, model: m}
        notebooks:
          01_tiny: {x: 2}
        """),
    "quick": textwrap.dedent("""\
        extends: default
        common: {seed: 5}
        notebooks:
          01_tiny: {fail: false}
        """),
}


def make_project(root: Path, toc: bool = False) -> Path:
    """01_tiny and the two profiles; with `toc`, also 02_broken and a toc naming a missing 03_planned."""
    if not toc:
        return write_project(root, {"01_tiny": TINY}, PROFILES)
    return write_project(root, {"01_tiny": TINY, "02_broken": BROKEN}, PROFILES,
                         toc=["01_tiny", "02_broken", ("03_planned", "A planned chapter")])


@pytest.fixture
def project(tmp_path) -> Path:
    return make_project(tmp_path / "proj")


# ---- profiles and parameters (no kernel) ----------------------------------------------------

def test_profile_extends_merges_common_and_notebooks(project):
    p = load_profile("quick", root=project)
    assert p.name == "quick" and p.description == "base"
    assert p.common["seed"] == 5 and p.common["x"] == 1 and p.common["profile"] == "quick"
    assert p.notebooks["01_tiny"] == {"x": 2, "fail": False}


def test_profile_errors_are_clear(project):
    with pytest.raises(FileNotFoundError, match="available: default, quick"):
        load_profile("nope", root=project)
    (project / "data" / "profiles" / "bad.yaml").write_text("common: {}\ncommn: {}\n")
    with pytest.raises(ValueError, match="unknown top-level keys"):
        load_profile("bad", root=project)
    (project / "data" / "profiles" / "loop.yaml").write_text("extends: loop\n")
    with pytest.raises(ValueError, match="cycle"):
        load_profile("loop", root=project)


def test_profile_notebook_names_are_checked_and_extends_finds_the_projects_profiles(project, tmp_path):
    profiles = project / "data" / "profiles"
    (profiles / "typo.yaml").write_text("extends: quick\nnotebooks:\n  01_tiy: {x: 3}\n")
    with pytest.raises(ValueError, match=r"typo.yaml: '01_tiy' under notebooks:/grid: is not a notebook of .*"
                                         r"known: 01_tiny \(fix the name\)"):
        load_profile("typo", root=project)
    (profiles / "gridtypo.yaml").write_text("grid:\n  02_nope: {x: [1, 2]}\n")
    with pytest.raises(ValueError, match="'02_nope' under notebooks:/grid:"):
        load_profile("gridtypo", root=project)
    # A profile kept elsewhere extends the project's profile by name (and a sibling of that name, if any).
    mine = tmp_path / "elsewhere" / "mine.yaml"
    mine.parent.mkdir()
    mine.write_text("extends: quick\ncommon: {seed: 9}\n")
    p = load_profile(mine, root=project)
    assert p.name == "mine" and p.common["seed"] == 9 and p.common["x"] == 1
    assert p.notebooks["01_tiny"] == {"x": 2, "fail": False}
    (mine.parent / "quick.yaml").write_text("extends: quick\ncommon: {x: 7}\n")   # itself extends the project's
    p = load_profile(mine, root=project)
    assert p.common["x"] == 7 and p.common["seed"] == 9 and p.notebooks["01_tiny"] == {"x": 2, "fail": False}
    mine.write_text("extends: nowhere\n")
    with pytest.raises(FileNotFoundError, match="extends 'nowhere', which is neither .* available there: default"):
        load_profile(mine, root=project)


def test_a_notebook_whose_outputs_are_in_use_is_refused(project):
    # Another process runs 01_tiny into the same folder (it holds that notebook's lock): refused at
    # once, naming its PID, before a kernel starts; other notebooks of the folder are not blocked.
    out = project / "book" / "generated"
    code = ("import sys, time\nfrom atomslib.lock import hold\nwith hold(sys.argv[1], 'atoms run 01_tiny', "
            "name='.01_tiny.lock'):\n    print('held', flush=True)\n    time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(NotebookFailed, match=rf"01_tiny: {out.resolve()} is in use by PID {holder.pid}"):
            run_notebook("01_tiny", {}, profile="default", root=project, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "01_tiny.ipynb").exists()


def test_shipped_profiles_load():
    for name in ("default", "quick", "paper", "gpu"):
        p = load_profile(name)
        for key in ("model", "layers", "site", "tokens", "heldout_tokens", "capacity", "device", "seed",
                    "cache_dir", "results_dir", "figures_dir"):
            assert key in p.common, f"profile {name} lacks {key}"
    assert load_profile("paper").common["device"] == load_profile("gpu").common["device"] == "cuda"


def test_parse_assignments_yaml_values():
    got = parse_assignments(["layers=[3, 15]", "tokens=2000", "site=mlp_in", "eps=1e-3", "flag=true", "none="])
    assert got == {"layers": [3, 15], "tokens": 2000, "site": "mlp_in", "eps": 1e-3, "flag": True, "none": None}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_assignments(["tokens"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_assignments(["2x=1"])


def test_resolve_params_precedence_paths_and_unknown_names(project):
    src = read_notebook(project / "notebooks" / "01_tiny.md")
    assert set(src.declared) == {"x", "fail", "profile", "results_dir", "figures_dir"}
    prof = load_profile("default", root=project)
    out = project / "book" / "generated"
    p = resolve_params(src, prof, {"fail": True}, project=project, out_dir=out)
    # common names the notebook does not declare (seed, model, cache_dir) are not passed
    assert p == {"x": 2, "fail": True, "profile": "default", "results_dir": "results", "figures_dir": "figures"}
    with pytest.raises(ValueError, match=r"does not declare.*x=1, fail=False"):
        resolve_params(src, prof, {"tokens": 5}, project=project, out_dir=out)
    prof.notebooks["01_tiny"]["typo"] = 1
    with pytest.raises(ValueError, match="profile 'default'.*typo"):
        resolve_params(src, prof, {}, project=project, out_dir=out)


def test_parameters_cell_must_be_single_and_parseable(tmp_path):
    two = tmp_path / "two.md"
    two.write_text(TINY.replace("```{code-cell} ipython3\nfrom atomslib", "```{code-cell} ipython3\n:tags: [parameters]\n\nfrom atomslib"))
    with pytest.raises(ValueError, match="exactly one cell tagged 'parameters' \\(found 2\\)"):
        read_notebook(two)
    eq = tmp_path / "eq.md"
    eq.write_text(TINY.replace("x = 1\n", "x = 1  # e.g. x=2\n"))
    with pytest.raises(ValueError, match="more than one '='"):
        read_notebook(eq)


def test_run_key_covers_source_params_inputs_not_cache_dir():
    k = run_key("src", {"a": 1, "cache_dir": "/x"})
    assert k == run_key("src", {"a": 1, "cache_dir": "/elsewhere"})
    assert len({k, run_key("src2", {"a": 1}), run_key("src", {"a": 2}),
                run_key("src", {"a": 1}, inputs={"f.json": "00"}), run_key("src", {"a": 1}, version="9")}) == 5


# ---- results convention and claims (no kernel) ----------------------------------------------

def test_claims_validation_and_verdicts():
    with pytest.raises(ValueError, match="unknown claim_id 'atom.r2'"):
        claim("atom.r2", 1.0, "R2=euclid", "heldout")
    with pytest.raises(TypeError, match="number or None"):
        claim("atoms.r2", "high", "R2=euclid", "heldout")
    results = {"03_neurons_features_atoms": {"claims": [
        claim("atoms.r2", 0.995, "R2=euclid", "heldout", model="m", layer=3),
        claim("atoms.r2", 0.90, "R2=uncentred", "heldout"),
        claim("atoms.q_star", None, "q*=A", "heldout")]}}
    rows = {(r["claim_id"], r["variant"]): r for r in evaluate_claims(results)}
    assert rows[("atoms.r2", "R2=euclid")]["verdict"] == "supported"
    assert rows[("atoms.r2", "R2=euclid")]["where"] == "m, layer 3"
    assert rows[("atoms.r2", "R2=uncentred")]["verdict"] == "not supported"
    assert rows[("atoms.q_star", "q*=A")]["verdict"] == "not measured"
    assert rows[("shift.aip_at_90", "—")]["verdict"] == "not measured"
    summary = conclusion_summary(evaluate_claims(results))
    sup = {e["claim_id"]: e["measurements"] for e in summary["supported"]}
    assert sup == {"atoms.r2": ["0.995 (R2=euclid, heldout, m, layer 3)"]}
    assert [e["claim_id"] for e in summary["not supported"]] == ["atoms.r2"]  # another variant
    assert "shift.aip_at_90" in [e["claim_id"] for e in summary["not measured"]]
    assert fmt(0.99923) == "0.999" and fmt(None) == "—" and fmt(3) == "3" and fmt(float("nan")) == "nan"
    assert CLAIMS_BY_ID["neurons.q_star"].verdict(0.01) == "supported"
    assert math.isinf(CLAIMS_BY_ID["neurons.q_star"].lo)


def test_claims_table_formats_values_and_blanks_fields_a_claim_lacks():
    t = claims_table([claim("atoms.r2", 0.91234, "R2=euclid", "heldout"),
                          claim("atoms.r2", None, "R2=euclid", "train", note="not measured")])
    assert list(t["value"]) == ["0.912", "—"]
    assert list(t["note"]) == ["", "not measured"]      # not NaN on the page


def test_validate_results_names_problems():
    assert validate_results([]) == ["top level must be an object, got list"]
    probs = validate_results({"notebook": "a", "params": {}, "metrics": {}, "claims": [{"claim_id": "x"}]}, "b")
    text = "; ".join(probs)
    assert "missing key 'atomslib_version'" in text and "expected 'b'" in text and "claims[0]" in text


# ---- papermill runs --------------------------------------------------------------------------

def test_run_writes_outputs_then_skips_then_force(project):
    out = project / "book" / "generated"
    r1 = run_notebook("01_tiny", {}, profile="default", root=project, progress=False)
    assert r1.status == "ok"
    assert output_files(out) == ["01_tiny.ipynb", "results/01_tiny.json"]  # no temp/partial files left
    res = json.loads((out / "results" / "01_tiny.json").read_text())
    nb = json.loads((out / "01_tiny.ipynb").read_text())
    assert res["run_key"] == nb["metadata"]["atoms"]["run_key"] == r1.key
    assert res["params"]["x"] == 2 and res["metrics"] == {"double": 4} and res["notebook"] == "01_tiny"
    assert validate_results(res, "01_tiny") == []
    assert run_notebook("01", {}, profile="default", root=project).status == "skipped"
    assert run_notebook("tiny", {}, profile="default", root=project, force=True).status == "ok"
    r4 = run_notebook("01_tiny", {"x": 3}, profile="default", root=project)
    assert r4.status == "ok" and r4.key != r1.key
    assert json.loads((out / "results" / "01_tiny.json").read_text())["metrics"] == {"double": 6}


def test_kernels_talk_over_private_unix_sockets_and_print_no_transport_warning(project, capfd, monkeypatch):
    # TCP kernels print "Kernel is running over TCP without encryption" at every start; IPC ones
    # do not. Their sockets go under a unique prefix in the temp folder and are removed afterwards.
    monkeypatch.chdir(project)
    before = set(Path(tempfile.gettempdir()).glob("atoms-kernel-*"))
    assert run_notebook("01_tiny", {}, profile="default", root=project, progress=False, force=True).status == "ok"
    err = capfd.readouterr().err
    assert "TCP" not in err, err
    assert set(Path(tempfile.gettempdir()).glob("atoms-kernel-*")) == before
    assert not list(project.glob("kernel-ipc*"))


def test_failing_notebook_names_cell_and_keeps_previous_outputs(project):
    out = project / "book" / "generated"
    ok = run_notebook("01_tiny", {}, profile="default", root=project)
    before = (out / "results" / "01_tiny.json").read_bytes(), (out / "01_tiny.ipynb").read_bytes()
    with pytest.raises(NotebookFailed) as e:
        run_notebook("01_tiny", {"fail": True}, profile="default", root=project)
    msg = str(e.value)
    assert "notebook 01_tiny failed in cell" in msg
    assert "`y = 1 / (0 if fail else 1)" in msg and "ZeroDivisionError" in msg
    partial = out / "01_tiny.partial.ipynb"
    assert str(partial) in msg and partial.exists()
    # the results the failed run wrote were rolled back; the executed notebook is untouched
    assert ((out / "results" / "01_tiny.json").read_bytes(), (out / "01_tiny.ipynb").read_bytes()) == before
    assert json.loads(before[0])["run_key"] == ok.key
    assert not list(out.rglob("*.previous")) and not list(out.rglob("*.tmp"))


def _listed(out: str, name: str) -> dict[str, str]:
    """`atoms run --list`'s line of notebook `name` as {parameter: what follows its '='}."""
    line = next(ln for ln in out.splitlines() if ln.startswith(f"{name} (stage "))
    return dict(item.split("=", 1) for item in re.split(r", (?=\w+=)", line.split(": ", 1)[1]))


def test_cli_list_shows_the_values_that_would_run(project, capsys):
    """--list merges the profile (extends included) and -p, as a run would, and says where a value that
    is not the notebook's own default comes from; the notebook's defaults were listed before."""
    assert cli.main(["run", "--list", "--profile", "quick", "--root", str(project), "-p", "fail=true"]) == 0
    out = capsys.readouterr().out
    assert "profile 'quick' (data/profiles/quick.yaml) and -p fail=True" in out.splitlines()[0]
    got = _listed(out, "01_tiny")
    assert got["x"] == "2 (profile; notebook: 1)"                # notebooks: 01_tiny of the extended default
    assert got["fail"] == "True (-p; notebook: False)"
    assert got["profile"] == '"quick" (profile; notebook: "default")'
    assert got["results_dir"] == '"results"'                     # the same as the notebook's default: unmarked
    assert cli.main(["run", "01_tiny", "--list", "--root", str(project), "-p", "x=7"]) == 0   # one notebook, default profile
    assert _listed(capsys.readouterr().out, "01_tiny")["x"] == "7 (-p; notebook: 1)"


def test_cli_list_refuses_a_parameter_no_notebook_takes(project, capsys):
    assert cli.main(["run", "--list", "--root", str(project), "-p", "tokens=5"]) == 2
    assert "-p tokens: no notebook declares it; parameters: fail, figures_dir, profile, results_dir, x" in \
        capsys.readouterr().err
    assert cli.main(["run", "01_tiny", "--list", "--root", str(project), "-p", "tokens=5"]) == 2
    assert "-p sets tokens, which 01_tiny does not declare" in capsys.readouterr().err


def test_cli_list_of_the_book_shows_the_quick_profile(capsys):
    """The bug this fixes: `atoms run --list --profile quick` printed chapter 1's own H=64, n_trials=24."""
    assert cli.main(["run", "01_theory", "--list", "--profile", "quick", "-p", "H=16"]) == 0
    got = _listed(capsys.readouterr().out, "01_theory")
    assert got["H"] == "16 (-p; notebook: 64)" and got["n_trials"] == "6 (profile; notebook: 24)"


def test_cli_html_needs_one_notebook(project, capsys):
    assert cli.main(["run", "--all", "--html", "--root", str(project)]) == 2
    assert "--html renders one notebook: give NOTEBOOK" in capsys.readouterr().err


def test_cli_unknown_parameter_lists_the_notebooks_parameters(project, capsys):
    rc = cli.main(["run", "01_tiny", "--root", str(project), "-p", "tokens=5"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "-p sets tokens, which 01_tiny does not declare" in err and "x=1, fail=False" in err


def test_run_all_parallel_missing_and_failed(tmp_path, capsys):
    project = make_project(tmp_path / "proj", toc=True)
    rc = cli.main(["run", "--all", "--profile", "quick", "--root", str(project), "--jobs", "2"])
    captured = capsys.readouterr()
    assert rc == 1  # one notebook failed, the others still ran
    assert "02_broken" in captured.err and "KeyError" in captured.err and "`z = {}[\"missing key\"]`" in captured.err
    assert "03_planned" in captured.err  # the missing-source warning lists it
    assert summary_statuses(captured.out) == {"01_tiny": "ok", "02_broken": "failed", "03_planned": "missing"}
    out = project / "book" / "generated"
    placeholder = json.loads((out / "03_planned.ipynb").read_text())
    assert placeholder["metadata"]["atoms"]["placeholder"] is True
    assert "A planned chapter" in "".join(placeholder["cells"][0]["source"])
    assert json.loads((out / "results" / "01_tiny.json").read_text())["params"]["profile"] == "quick"


class _Recorder(Executor):
    seen: list = []

    def run(self, tasks, on_result=None):
        res = []
        for t in tasks:
            _Recorder.seen.append((t.name, t.params, Path(t.results_path).name))
            r = TaskResult(t.name, "ok", 0.0, t.key)
            res.append(r)
            if on_result:
                on_result(r)
        return res


def test_executor_registry(project):
    with pytest.raises(ValueError, match="unknown executor 'nosuch'; available: local"):
        get_executor("nosuch")
    with pytest.raises(ValueError, match="no --address"):
        get_executor("local", address="ray://x")
    register_executor("recorder", _Recorder)
    try:
        results = run_all("default", executor="recorder", root=project, progress=False)
    finally:
        run_module._EXECUTORS.pop("recorder")
    assert [r.status for r in results] == ["ok"]
    assert _Recorder.seen == [("01_tiny", {"x": 2, "profile": "default", "results_dir": "results",
                                           "figures_dir": "figures"}, "01_tiny.json")]


def test_an_unhealthy_sae_makes_its_claims_inconclusive_with_the_reason():
    """The health gate (issue: a number from a collapsed SAE is not evidence): a claim that carries
    an unhealthy record gets INCONCLUSIVE whatever its value, a healthy one its rule's verdict."""
    from atomslib.book.results import INCONCLUSIVE, health_words, verdicts_by_model

    sick = {"healthy": False, "reasons": ["97.5% of units never active on held-out tokens (bar 10%)"],
            "dead_share": 0.975}
    well = {"healthy": True, "reasons": [], "dead_share": 0.01, "l0": 31.0, "r2_without_massive": 0.8}
    results = {"03_neurons_features_atoms": {"claims": [
        claim("features.r2", 0.18, "R2=euclid", "heldout", model="g", layer=2, health=sick),
        claim("features.r2", 0.50, "R2=euclid", "heldout", model="g", layer=9, health=well),
        claim("atoms.r2", 0.80, "R2=euclid", "heldout", model="s", layer=3, health=sick)]}}
    rows = evaluate_claims(results)
    by = {(r["claim_id"], r.get("layer")): r for r in rows if r.get("model")}
    assert by[("features.r2", 2)]["verdict"] == INCONCLUSIVE      # 0.18 would be "supported" (≤ 0.9)
    assert "97.5% of units never active" in by[("features.r2", 2)]["SAE health"]
    assert by[("features.r2", 9)]["verdict"] == "supported"
    assert health_words(well).startswith("healthy")
    per = verdicts_by_model(rows)
    assert per["features.r2"]["g"] == "supported (1 inconclusive)"
    assert per["atoms.r2"]["s"] == INCONCLUSIVE
    summary = conclusion_summary(rows)
    assert [e["claim_id"] for e in summary[INCONCLUSIVE]] == ["features.r2", "atoms.r2"]
    assert "unhealthy" in summary[INCONCLUSIVE][0]["measurements"][0]
    with pytest.raises(ValueError, match="health must be a mapping"):
        claim("atoms.r2", 0.9, "R2=euclid", "heldout", health={"dead_share": 0.5})
    assert validate_results({"notebook": "n", "params": {}, "atomslib_version": "0", "created": "", "metrics": {},
                             "claims": [claim("atoms.r2", 0.9, "R2=euclid", "heldout", health=sick)]}) == []


CHECKED = notebook_md("""
```{code-cell} ipython3
:tags: [parameters]

tokens = 128
results_dir = "results"
```

```{code-cell} ipython3
from atomslib.harvesting import HarvestConfig
cfg = HarvestConfig(tokens=tokens)   # the notebook checks its parameters, as the book's do
```
""")


def test_a_notebook_executed_with_a_bad_p_value_fails_with_a_message(tmp_path, capsys):
    """`atoms run NB -p ...` (executed, not --list): a value of the wrong type is refused before a kernel starts
    and writes nothing; one of the right type that the notebook refuses fails in the cell that checks it, in
    one message naming the cell and the error, with no traceback and no executed notebook left in place."""
    project = write_project(tmp_path / "proj", {"01_checked": CHECKED}, {"default": "common: {}\n"})
    out = tmp_path / "out"
    assert cli.main(["run", "01_checked", "--root", str(project), "--out", str(out), "-p", "tokens=many"]) == 2
    err = capsys.readouterr().err
    assert "-p: tokens must be an int (01_checked's default is 128), got str 'many'; e.g. -p tokens=128" in err
    assert not out.exists()                                   # refused before a kernel started
    assert cli.main(["run", "01_checked", "--root", str(project), "--out", str(out), "-p", "tokens=-5"]) == 2
    err = capsys.readouterr().err
    assert "notebook 01_checked failed in cell 2" in err and "`from atomslib.harvesting import HarvestConfig`" in err
    assert "ValueError: tokens must be a positive int, got -5" in err and "Traceback" not in err
    assert not (out / "01_checked.ipynb").exists() and (out / "01_checked.partial.ipynb").exists()
