"""The PBMC bar of interpretation across SAE seeds: for B, NK, monocytes and T cells, the
feature most specific to the type (``cell_type_composition``'s ``specificity``: mean in the
type over the closest other type) should have the type's canonical markers among the genes
differentially expressed in its active cells, and its top immune programme should be the type's.

    python experiments/pbmc_cell_type_features.py [--seeds 0 1 2] [--work /tmp/bioviz_pbmc_seeds]

Prints, per seed and type, the top 3 features: markers found, best gene set, its q, and the
specificity, activation ratio and number of firing cells. The slow test
``tests/test_interpret_genes.py::test_demo_cell_type_features_point_to_their_markers_and_programme``
checks seed 0.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", default="/tmp/bioviz_pbmc_seeds")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import scanpy as sc

    import bioviz as bv
    from bioviz.adapters.singlecell.demo import COARSE_TYPES as COARSE
    from bioviz.adapters.singlecell.demo import MARKERS, PROGRAMMES, demo_adapter, pbmc68k_counts
    from bioviz.interpret import genes as G
    from bioviz.interpret.enrichment import overrepresentation
    from bioviz.interpret.genesets import immune_gmt, read_gmt

    work = Path(args.work)
    store = work / "store"
    if not (store / "manifest.json").exists():
        bv.extract(demo_adapter(rows="gene", obs_columns=["bulk_labels"]), pbmc68k_counts(),
                   "bert.encoder.layer.1", store, batch_size=32, dtype="float16", progress=False)
    expression = sc.datasets.pbmc68k_reduced().raw.to_adata()
    sets = read_gmt(immune_gmt())
    passed = 0
    for seed in args.seeds:
        sae, = bv.train(str(store), max_steps=600, batch_size=2048, output_dir=str(work / f"sae{seed}"),
                        seed=seed, sae={"k": 16, "expansion_factor": 8}, optim={"lr": 2e-3},
                        trainer={"enable_progress_bar": False, "enable_model_summary": False})
        cells = G.cell_scores(bv.encode(sae, str(store), progress=False), stat="mean", progress=False)
        cells.obs["coarse"] = cells.obs["bulk_labels"].astype(str).map(COARSE).fillna("other")
        comp = G.cell_type_composition(cells, groupby="coarse", progress=False)
        for kind, programme in PROGRAMMES.items():
            mine = comp[(comp.group == kind) & (comp.n_firing >= 10)]
            mine = mine.sort_values("specificity", ascending=False).head(3)
            for i, row in enumerate(mine.itertuples()):
                de = G.active_cell_de(expression, cells, [row.feature], active_quantile=0.8, n=20,
                                      progress=False)
                best = overrepresentation(G.gene_lists(de, 20), sets, expression.var_names).iloc[0]
                found = sorted(MARKERS[kind] & set(de.gene))
                ok = bool(found) and best.set == programme
                passed += ok and i == 0
                print(f"seed {seed} {kind:<4} {'top' if i == 0 else '   '} {row.feature:<6} "
                      f"markers {found} | {best.set} q={best.q:.2g} | specificity "
                      f"{row.specificity:.2f}, ratio {row.activation_ratio:.2f}, "
                      f"{row.n_firing} cells firing | {'pass' if ok else 'FAIL'}", flush=True)
    print(f"top features passing: {passed}/{len(args.seeds) * len(PROGRAMMES)}")


if __name__ == "__main__":
    main()
