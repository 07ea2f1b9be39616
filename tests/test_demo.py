"""`atoms demo` and `atoms info`: the newcomer's first commands must work and say true things."""
import json

from atomslib.cli import main
from atomslib.demo import info, run_demo


def test_demo_theorems_hold_on_its_atom_set():
    out = run_demo(seed=0)
    t = out["theory"]
    assert t["rip_sampled_lower"] <= t["rip_upper"] + 1e-12
    assert t["uniqueness_K_bound"] > 3  # the demo's K = 3 is inside the guarantee ...
    assert t["bp_support_recovery"] == 1.0 and t["omp_support_recovery"] == 1.0  # ... so recovery is exact
    assert t["threshold_interval"] is not None
    u = out["synthetic_units"]
    assert u["neurons"]["q_star_A"] < 0.05 < u["true_atoms"]["q_star_A"]
    assert u["tsae"]["r2"] > 0.9


def test_info_and_cli_json(tmp_path, capsys):
    d = info()
    assert d["default_model_gguf"].endswith(".gguf") and d["default_corpus"].endswith(".json")
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["atomslib"]


def test_cli_help_lists_the_tour(capsys):
    assert main([]) == 0
    assert "atoms demo" in capsys.readouterr().out
