"""`atoms demo` and `atoms info`: the newcomer's first commands must work and say true things."""
import json

from atomslib.cli import main
from atomslib.demo import info, run_demo


def test_demo_shows_built_and_trained_identification(capsys):
    out = run_demo(seed=0)
    said = capsys.readouterr().out
    p = out["packed"]
    assert p["rip_sampled_lower"] <= p["rip_upper"] + 1e-12
    assert p["threshold_interval"] is not None                   # the theorem applies to problem 1 ...
    built = p["built"]
    assert built["mcc"] > 0.999 and built["support_exact"] == 1.0 and built["l0"] == 2.0   # ... and its encoder recovers
    # Trained: two units per atom identify, or the demo trains one unit per atom and says in one sentence what the two
    # runs show. Which case a machine lands in is a coin at the bar (seed 0 with one unit per atom: 95%+ on an Intel
    # Xeon, 93.8% at MCC 0.986 on an AMD EPYC), so the test holds the demo to telling the truth about its own numbers,
    # and the trainer to finding nearly all the atoms one way or the other.
    two, one = p["trained"]["recovered_95"], p["trained_one_unit_per_atom"]
    if two >= 0.95:
        assert one is None and "Training found the atoms too." in said
    elif one["recovered_95"] >= 0.95:
        assert f"Why the {2 * 96}-unit run misses" in said and f"find {one['recovered_95']:.0%} of the atoms" in said
    else:
        assert "it does not say gradient descent finds it, and here it does not" in said
    assert max(two, one["recovered_95"] if one else 0.0) >= 0.9, p
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
