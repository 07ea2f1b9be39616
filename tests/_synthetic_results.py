"""A small results folder as the book's chapters would leave it, for the pages that read results
(the verdict matrix, chapter 6) without running the chapters: two model families at two layers
each, the theory claims without a model, and health records, with every verdict kind present:

- supported and not supported on their own;
- `atoms.r2` on smollm2-135m layer 3: one variant supported, one not (mixed);
- `atoms.q_star` on gemma3-270m layer 9: measured on an SAE that failed the health bar (inconclusive);
- `features.r2` on gemma3-270m layer 2: one SAE healthy, one not (the healthy one decides).

The folder is `<root>/results/` (the first model, smollm2-135m) and
`<root>/models/gemma3-270m/results/` (`results.load_model_results` reads both).
"""
from __future__ import annotations

from pathlib import Path

from atomslib.book.results import claim, save_results

HEALTHY = {"healthy": True, "reasons": [], "dead_share": 0.008, "l0": 31.7, "l0_target": 32, "r2_without_massive": 0.91}
UNHEALTHY = {"healthy": False, "reasons": ["dead units 62% > 20%"], "dead_share": 0.62, "l0": 3.1, "l0_target": 32,
             "r2_without_massive": 0.12}
DEPTH = {"smollm2-135m": 30, "gemma3-270m": 18}

# (model, layer) -> {claim_id: [(value, variant, health)]}
MEASURED = {
    ("smollm2-135m", 3): {"neurons.r2": [(1.0, "R2=euclid", None)], "neurons.q_star": [(0.0041, "q*=A", None)],
                          "features.r2": [(0.8123, "R2=euclid", HEALTHY)], "features.q_star": [(0.41, "q*=A", HEALTHY)],
                          "atoms.r2": [(0.99512, "R2=euclid", HEALTHY), (0.95, "R2=uncentred", HEALTHY)],
                          "atoms.q_star": [(0.97, "q*=A", HEALTHY)]},
    ("smollm2-135m", 15): {"neurons.r2": [(1.0, "R2=euclid", None)], "neurons.q_star": [(0.0007874, "q*=A", None)],
                           "features.r2": [(0.93, "R2=euclid", HEALTHY)], "features.q_star": [(0.5, "q*=A", HEALTHY)],
                           "atoms.r2": [(0.9931, "R2=euclid", HEALTHY)], "atoms.q_star": [(0.91, "q*=A", HEALTHY)]},
    ("gemma3-270m", 2): {"neurons.r2": [(1.0, "R2=euclid", None)], "neurons.q_star": [(0.01, "q*=A", None)],
                         "features.r2": [(0.7, "R2=euclid", HEALTHY), (0.2, "R2=uncentred", UNHEALTHY)],
                         "features.q_star": [(0.3, "q*=A", HEALTHY)],
                         "atoms.r2": [(0.992, "R2=euclid", HEALTHY)], "atoms.q_star": [(0.96, "q*=A", HEALTHY)]},
    ("gemma3-270m", 9): {"neurons.r2": [(1.0, "R2=euclid", None)], "neurons.q_star": [(0.02, "q*=A", None)],
                         "features.r2": [(0.88, "R2=euclid", HEALTHY)], "features.q_star": [(0.6, "q*=A", HEALTHY)],
                         "atoms.r2": [(0.981, "R2=euclid", HEALTHY)], "atoms.q_star": [(0.99, "q*=A", UNHEALTHY)]},
}
SHIFT = {("smollm2-135m", 3): (21.3, 0.8), ("smollm2-135m", 15): (9.5, 3.1),
         ("gemma3-270m", 2): (12.25, 1.2), ("gemma3-270m", 9): (30.98, 0.4)}


def write_synthetic_results(root: Path) -> Path:
    """Write the results files under `root` (see the module docstring); returns `root/results`."""
    root = Path(root)
    theory = [claim("theorem.rip", 1.0, "sampled δ_K", "synthetic"),
              claim("theorem.uniqueness", 1.0, "spark", "synthetic"),
              claim("theorem.l1_recovery", 0.97, "basis pursuit", "synthetic"),
              claim("theorem.omp_recovery", 1.0, "OMP", "synthetic")]
    save_results("01_theory", {"profile": "quick"}, {}, theory, results_dir=root / "results", title="Theory")
    for model in DEPTH:
        folder = root / "results" if model == "smollm2-135m" else root / "models" / model / "results"
        units, shift = [], []
        for (m, layer), per in MEASURED.items():
            if m != model:
                continue
            for cid, entries in per.items():
                units += [claim(cid, v, variant, "heldout", health=h, model=model, layer=layer) for v, variant, h in entries]
            off, aip = SHIFT[(model, layer)]
            shift += [claim("shift.euclid_off_90", off, "euclid", "heldout", model=model, layer=layer),
                      claim("shift.aip_at_90", aip, "AIP", "heldout", model=model, layer=layer)]
        params = {"profile": "quick", "model": model}
        save_results("03_neurons_features_atoms", params, {}, units, results_dir=folder, title="Neurons")
        save_results("02_representation_shift", params, {}, shift, results_dir=folder, title="Shift")
    return root / "results"
