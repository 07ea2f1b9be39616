"""`atoms demo` and `atoms info`: the newcomer's first commands must work and say true things."""
import json

from atomslib.cli import main
from atomslib.demo import info, run_demo


def test_demo_shows_built_and_trained_identification():
    out = run_demo(seed=0)
    p = out["packed"]
    assert p["rip_sampled_lower"] <= p["rip_upper"] + 1e-12
    assert p["threshold_interval"] is not None                   # the theorem applies to problem 1 ...
    built = p["built"]
    assert built["mcc"] > 0.999 and built["support_exact"] == 1.0 and built["l0"] == 2.0   # ... and its encoder recovers
    # Trained: either two units per atom identify, or the demo shows why not with one unit per atom (which does).
    one = p["trained_one_unit_per_atom"]
    assert p["trained"]["recovered_95"] >= 0.95 or (one is not None and one["recovered_95"] >= 0.95), p
    r = out["random"]["trained"]                                  # a trained TSAE identifies atoms in general position
    assert r["mcc"] >= 0.98 and r["recovered_95"] >= 0.9 and abs(r["l0"] - 3) <= 0.6, r
    q = out["random"]["q_star_A"]
    assert q["neurons"] < 0.05 < q["true_atoms"]


def test_info_and_cli_json(tmp_path, capsys):
    d = info()
    assert d["default_model_gguf"].endswith(".gguf") and d["default_corpus"].endswith(".json")
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["atomslib"]


def test_cli_help_lists_the_tour(capsys):
    assert main([]) == 0
    assert "atoms demo" in capsys.readouterr().out
