"""The single-cell demo study: a planted interferon response in PBMCs, found through the
shipped Geneformer-architecture model (``experiments/studies/pbmc_ifn.yaml``).

:class:`PlantedInterferonPBMC` writes the cohort (``cells.h5ad``, ``clinical.csv``,
``truth.json``) and, once the study has run, :meth:`PlantedInterferonPBMC.check` says from the
study's own outputs whether the planted programme was recovered.

The cells are scanpy's ``pbmc68k_reduced`` (700 PBMCs of one donor, counts recovered by
:func:`~bioviz.adapters.singlecell.pbmc68k_counts`). Donors are made from them and an
interferon response is planted in the case donors' myeloid cells, so that the answer is known:
a planted benchmark, not a finding about interferon biology.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from bioviz.errors import InputError

#: the shipped immune gene set that is planted
PROGRAMME = "IFN_TYPE_I_RESPONSE"
#: the cell types (pbmc68k's ``bulk_labels``) whose cells carry the plant: the myeloid cells.
#: pbmc68k's "Dendritic" label holds mostly monocytes and dendritic cells (LYZ in 98% of them,
#: CST3 in all); in CD14+ monocytes alone (129 cells, 8 a donor) the plant reaches too few tokens
#: of a donor's ~11,000 for this small model's features to pass q < 0.05 reliably.
PLANTED_TYPES = ("CD14+ Monocyte", "Dendritic")
#: check(): a candidate names the programme when its enrichment q is below ALPHA, or when at
#: least TOP_HITS of its TOP_GENES driving genes are in the programme
ALPHA, TOP_GENES, TOP_HITS = 0.05, 10, 3
#: counts per cell after normalisation (scanpy's normalize_total), before log1p
TARGET_SUM = 10_000


class PlantedInterferonPBMC:
    """A PBMC cohort of ``n_donors`` donors, half of them cases whose myeloid cells carry a
    type I interferon response (a planted benchmark).

    Donors. pbmc68k_reduced holds one donor's cells. Within each cell type (``bulk_labels``)
    the cells are shuffled and dealt round-robin to the donors, starting at a random donor, so
    each donor gets an equal share (±1 cell) of every type; a type with fewer cells than donors
    (CD34+: 13 cells; CD4+/CD45RA+/CD25- naive T: 8) reaches only as many donors as it has
    cells, one each. Half the donors, drawn at random, are cases (``diagnosis`` = ``case``),
    the rest controls. Age (whole years, uniform in ``age_range``) and sex (half F, half M,
    shuffled) are drawn per donor independently of the diagnosis: covariates to adjust for.

    The plant. In every cell of ``cell_types`` (default: CD14+ Monocyte and Dendritic, the
    myeloid cells, 369 of 700) of a case donor, each gene of the shipped immune gene set
    ``IFN_TYPE_I_RESPONSE`` that is among pbmc68k_reduced's 765 genes — 13 of its 46: IFITM1,
    IFITM2, IFITM3, ISG20, OAS1, BST2, IRF1, IRF7, GBP2, EGR1, LY6E, SP110, PSME2 — is raised by
    ``effect`` on the log2 scale of pseudo-counted counts: ``c' = round(2**effect * (c + 1)) - 1``
    (``log2(c' + 1) = log2(c + 1) + effect``; with the default ``effect=2``, ``c' = 4c + 3``).
    The pseudo-count switches on genes a cell did not express, as a real interferon response
    does. The model sees the plant because Geneformer ranks a cell's genes by normalised
    expression: at ``effect=2`` a touched cell expresses all 13 (5 before, on average) and their
    median rank among its ~250 genes moves from about 130 to about 20. Other counts are unchanged; ``n_counts`` holds the new
    totals. ``effect=0`` plants nothing (the null cohort).

    Files: ``cells.h5ad`` (counts in ``layers["counts"]``, ``normalize_total(1e4)`` + ``log1p``
    in ``X``; obs ``donor`` (the subject), ``library`` (the sample), ``cell_type``),
    ``clinical.csv`` (``subject_id, diagnosis, age, sex``) and ``truth.json``.

    Parameters
    ----------
    n_donors
        Donors (even, at least 8).
    effect
        The plant's size in log2 units of ``counts + 1`` (0: no plant).
    seed
        Seeds the donors, the labels and the covariates.
    age_range
        Youngest and oldest age.
    cell_types
        The ``bulk_labels`` cell types that carry the plant.
    """

    def __init__(self, n_donors: int = 16, effect: float = 2.0, seed: int = 0,
                 age_range: tuple[int, int] = (25, 75), cell_types: tuple[str, ...] = PLANTED_TYPES):
        if isinstance(n_donors, bool) or not isinstance(n_donors, int) or n_donors < 8 or n_donors % 2:
            raise InputError(f"n_donors={n_donors!r}: expected an even whole number of at least 8 "
                             "(half cases, half controls)")
        if isinstance(effect, bool) or not isinstance(effect, (int, float)) or not 0 <= effect <= 8:
            raise InputError(f"effect={effect!r}: expected a number from 0 (no plant) to 8 (log2 units)")
        ages = list(age_range) if isinstance(age_range, (list, tuple)) else []
        if len(ages) != 2 or not all(isinstance(a, int) and not isinstance(a, bool) for a in ages) \
                or not 0 <= ages[0] <= ages[1]:
            raise InputError(f"age_range={age_range!r}: expected two whole numbers [youngest, oldest]")
        if isinstance(cell_types, str) or not cell_types:
            raise InputError(f"cell_types={cell_types!r}: expected a list of bulk_labels cell types")
        self.n_donors, self.effect, self.seed = n_donors, float(effect), int(seed)
        self.age_range = (ages[0], ages[1])
        self.cell_types = [str(t) for t in cell_types]

    # -- the cohort ------------------------------------------------------------------------

    def build(self, folder) -> dict:
        """Write ``cells.h5ad``, ``clinical.csv`` and ``truth.json`` into ``folder`` (made if
        missing); return the truth."""
        from .demo import pbmc68k_counts

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        adata = pbmc68k_counts()
        types = adata.obs["bulk_labels"].astype(str).to_numpy()
        unknown = sorted(set(self.cell_types) - set(types))
        if unknown:
            raise InputError(f"cell_types: {unknown} are not pbmc68k_reduced bulk_labels; they are "
                             f"{sorted(set(types))}")
        rng = np.random.default_rng(self.seed)
        donors = [f"D{i + 1:02d}" for i in range(self.n_donors)]
        donor_of = self._deal(types, rng)
        cases = np.sort(rng.choice(self.n_donors, self.n_donors // 2, replace=False))
        clinical = pd.DataFrame({
            "subject_id": donors,
            "diagnosis": np.where(np.isin(np.arange(self.n_donors), cases), "case", "control"),
            "age": rng.integers(self.age_range[0], self.age_range[1] + 1, self.n_donors),
            "sex": rng.permutation(np.array(["F", "M"] * (self.n_donors // 2))),
        })

        programme = programme_genes()
        genes = [g for g in programme if g in set(adata.var_names)]
        cols = adata.var_names.get_indexer(genes)
        planted = np.isin(donor_of, cases) & np.isin(types, self.cell_types) & (self.effect > 0)
        touched = np.flatnonzero(planted)
        X = adata.X.toarray()
        before = X[np.ix_(touched, cols)]
        X[np.ix_(touched, cols)] = plant(before, self.effect)

        obs = adata.obs.copy()
        obs["source_donor"] = obs["donor"]  # the one real donor of pbmc68k
        obs["donor"] = [donors[i] for i in donor_of]
        obs["cell_type"] = types
        obs["n_counts"] = X.sum(1)
        counts = sp.csr_matrix(X.astype(np.float32))
        # scanpy's layout: log-normalised values in X (what the interpretation's differential
        # expression reads), the counts the model ranks in layers["counts"]
        norm = sp.diags(TARGET_SUM / X.sum(1)) @ counts
        cells = ad.AnnData(X=norm.log1p().astype(np.float32).tocsr(), obs=obs, var=adata.var.copy(),
                           layers={"counts": counts},
                           uns={"counts_recovery": adata.uns["counts_recovery"], "log1p": {"base": None}})
        cells.write_h5ad(folder / "cells.h5ad")
        clinical.to_csv(folder / "clinical.csv", index=False)
        truth = self._truth(genes, len(programme), adata.obs_names[touched].tolist(), before,
                            X[np.ix_(touched, cols)], donors, cases, donor_of)
        (folder / "truth.json").write_text(json.dumps(truth, indent=1))
        return truth

    def _deal(self, types: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Each cell's donor index: per cell type, shuffled cells dealt round-robin."""
        donor_of = np.empty(len(types), dtype=np.int64)
        for t in sorted(set(types)):
            idx = rng.permutation(np.flatnonzero(types == t))
            donor_of[idx] = (rng.integers(self.n_donors) + np.arange(len(idx))) % self.n_donors
        return donor_of

    def _truth(self, genes, n_set, touched, before, after, donors, cases, donor_of) -> dict:
        return {
            "kind": "planted benchmark: a type I interferon response in the case donors' myeloid cells",
            "programme": PROGRAMME,
            "gene_set_source": "bioviz.interpret.genesets.immune_gmt()",
            "genes": genes,
            "n_genes_in_set": n_set,
            "n_genes_planted": len(genes),
            "cell_types": self.cell_types,
            "effect_log2": self.effect,
            "fold_change_pseudocounted": 2.0 ** self.effect,
            "rule": "c' = round(2**effect * (c + 1)) - 1 for the planted genes in every cell of the planted "
                    "cell types of a case donor (counts in cells.h5ad layers['counts']); all else unchanged",
            "n_cells_touched": len(touched),
            "cells_touched": touched,
            "mean_planted_counts_before": float(before.mean()) if before.size else None,
            "mean_planted_counts_after": float(after.mean()) if after.size else None,
            "donors": {
                "rule": "within each bulk_labels cell type, cells shuffled and dealt round-robin to the donors "
                        "from a random first donor (equal shares ±1; a type with fewer cells than donors "
                        "reaches as many donors as it has cells)",
                "n_donors": self.n_donors, "cases": [donors[i] for i in cases],
                "cells_per_donor": {d: int((donor_of == i).sum()) for i, d in enumerate(donors)},
            },
            "covariates": {"age": f"uniform whole years in [{self.age_range[0]}, {self.age_range[1]}]",
                           "sex": "half F, half M, shuffled", "independent_of_diagnosis": True},
            "source": "scanpy pbmc68k_reduced (700 PBMCs of one donor; counts recovered from .raw)",
            "seed": self.seed,
        }

    # -- was it recovered? -----------------------------------------------------------------

    def check(self, study) -> tuple[bool, str]:
        """Whether the finished ``study`` recovered the planted programme, as one line.

        Judged from the study's own outputs: the best-ranked candidate (``findings/
        candidates.parquet``) whose interpretation names the programme — its gene-set enrichment
        (``interpretation/enrichment.parquet``) at q < 0.05, or at least 3 of its 10 top driving
        genes (``interpretation/top_genes.parquet``) in the programme.
        """
        study = Path(study)
        cand = _table(study / "findings" / "candidates.parquet")
        enrich = _table(study / "interpretation" / "enrichment.parquet", required=False)
        tops = _table(study / "interpretation" / "top_genes.parquet", required=False)
        members = set(programme_genes())
        head = "single cell: "
        if not len(cand):
            return False, (f"{head}NOT recovered the planted interferon programme — no "
                           f"candidate feature (none at q < {ALPHA})")
        best = cand.sort_values("rank", kind="stable").drop_duplicates("feature")
        for row in best.itertuples():
            f = str(row.feature)
            q_set, n_set = _enrichment(enrich, f)
            hits = sum(g in members for g in _top_list(tops, f))
            if (q_set is not None and q_set < ALPHA) or hits >= TOP_HITS:
                why = (f"{PROGRAMME} not tested for enrichment" if q_set is None else
                       f"enriched for {PROGRAMME} ({n_set} genes, q = {q_set:.2g})" if q_set < ALPHA else
                       f"not enriched for {PROGRAMME} (q = {q_set:.2g})")
                return True, (f"{head}recovered the planted interferon programme — {f} rank {int(row.rank)}, "
                              f"q = {row.q:.2g}, {why}; {hits} of its top {TOP_GENES} genes in the programme")
        first = best.iloc[0]
        return False, (f"{head}NOT recovered the planted interferon programme — {len(best)} "
                       f"candidates, none enriched for {PROGRAMME}; best {first.feature} (rank "
                       f"{int(first['rank'])}, q = {first['q']:.2g}), top genes "
                       f"{', '.join(_top_list(tops, str(first.feature))[:5]) or 'none'}")


def programme_genes() -> tuple[str, ...]:
    """The planted programme's genes, as the shipped immune GMT lists them."""
    from bioviz.interpret.genesets import immune_gmt, read_gmt

    return read_gmt(immune_gmt())[PROGRAMME].genes


def plant(counts: np.ndarray, effect: float) -> np.ndarray:
    """Counts raised by ``effect`` log2 units of ``counts + 1`` (whole counts)."""
    return np.round(2.0 ** effect * (counts + 1.0)) - 1.0


def _table(path: Path, required: bool = True) -> pd.DataFrame | None:
    if not path.is_file():
        if required:
            raise InputError(f"{path}: missing; run the study (associate, then interpret) before check()")
        return None
    return pd.read_parquet(path)


def _enrichment(enrich, feature: str) -> tuple[float | None, int]:
    """The programme's over-representation q (None when not tested) and overlap for ``feature``."""
    if enrich is None:
        return None, 0
    row = enrich[(enrich["feature"].astype(str) == feature) & (enrich["set"] == PROGRAMME)]
    if row.empty or not math.isfinite(float(row["q"].iloc[0])):
        return None, 0
    return float(row["q"].iloc[0]), int(row["n_overlap"].iloc[0])


def _top_list(tops, feature: str) -> list[str]:
    if tops is None:
        return []
    mine = tops[tops["feature"].astype(str) == feature].sort_values("rank")
    return mine["gene"].astype(str).head(TOP_GENES).tolist()
