"""scripts/gpu_measure.py (the gpu profile's measurement on a card, prepared without one) and the
trainer benchmark it runs: the commands it would run, its refusal without a GPU, its summary, and
bench/train_throughput.py with SAELens beside atomslib at a smoke size on the CPU."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_measure", ROOT / "scripts" / "gpu_measure.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_dry_run_lists_the_book_the_site_and_both_batches(capsys, tmp_path):
    assert _script().main(["--dry-run", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    book = [line for line in lines if line.startswith("book: ")]
    assert len(book) == 1 and book[0].endswith("-m atomslib.cli run --all --profile gpu --jobs 2")
    assert any(line.startswith("site: ") and "jupyter-book build ." in line for line in lines)
    bench = [line for line in lines if line.startswith("bench: ")]
    assert [b.split("--batch ")[1].split()[0] for b in bench] == ["512", "4096"]
    assert all("--device cuda" in b and "--no-saelens" not in b for b in bench)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_it_refuses_to_measure_without_a_gpu(tmp_path):
    with pytest.raises(SystemExit, match=r"gpu_measure: torch .* sees no GPU here; run it on a GPU node"):
        _script().main(["--out", str(tmp_path)])
    assert not (tmp_path / "measure.json").exists()


def test_the_summary_reads_the_phases_and_the_batch_4096_benchmark(tmp_path):
    mod = _script()
    table = ("notebook                         status    seconds  key\n" + "-" * 64 + "\n"
             "01_theory                        ok           14.7  0123456789ab\n"
             "03_neurons_features_atoms[gemma3-270m] ok    110.8  0123456789ab\n")
    assert [r["notebook"] for r in mod.book_rows(table)] == ["01_theory", "03_neurons_features_atoms[gemma3-270m]"]
    bench = {"results": {"atomslib": {"tok_per_s": 2e6, "r2": 0.7, "l0": 31.0},
                         "saelens": {"tok_per_s": 5e5, "r2": 0.69, "l0": 33.0}}, "speedup_vs_saelens": 4.0}
    (tmp_path / "train_throughput_cuda_b4096.json").write_text(json.dumps(bench))
    summary = {"phases": [{"phase": "book", "seconds": 400.0, "returncodes": [0]},
                          {"phase": "site", "seconds": 90.0, "returncodes": [0]}]}
    mod.summarise(summary, tmp_path)
    got = json.loads((tmp_path / "measure.json").read_text())
    assert got["book_and_site_s"] == 490.0 and got["within_8_min"] is False
    assert got["b4096"]["speedup"] == 4.0 and got["b4096"]["saelens"]["r2"] == 0.69


def test_the_trainer_benchmark_runs_saelens_beside_atomslib(tmp_path):
    """The same script the card runs (`--device cuda`), here on the CPU at a smoke size."""
    pytest.importorskip("sae_lens")
    out = tmp_path / "tt.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--synthetic", "--tokens", "4096",
                        "--batch", "512", "--width", "64", "--rounds", "1", "--eval-rows", "1024", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["device"] == "cpu" and r["batch"] == 512 and r["activations"].startswith("Gaussian")
    assert set(r["results"]) == {"atomslib", "saelens"} and r["speedup_vs_saelens"] > 0
    assert all(0 < r["results"][k]["l0"] <= 64 for k in r["results"])
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--device", "cuda", "--synthetic"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    if not torch.cuda.is_available():
        assert p.returncode == 1 and p.stderr.strip().startswith("train_throughput: device='cuda' was requested")
