"""Interpretation against its peers, side by side.

- preranked_vs_gseapy_*: GSEA preranked, 20 features × 2,000 genes, 40 gene sets, 1,000
  permutations, against ``gseapy.prerank`` (one thread, a dict of sets: offline). Speedup is
  gseapy's time over bioviz's; ``max_rel_es_diff`` compares enrichment scores, which are
  exact in both (NES and p are Monte-Carlo and differ by sampling only).
- tomtom_vs_memelite_*: 20 query PWMs (JASPAR matrices trimmed, reversed, noised, and random
  ones) against every JASPAR2026 CORE vertebrate matrix, against memelite's Tomtom (exact
  target columns, one job, after its numba compilation). ``top_match_agreement`` is the share
  of queries whose best target is the same in both.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
import pandas as pd

KEYS = ("preranked_vs_gseapy_speedup", "preranked_vs_gseapy_max_rel_es_diff",
        "tomtom_vs_memelite_speedup", "tomtom_vs_memelite_top_match_agreement")


def _say(msg):
    print(f"# {msg}", file=sys.stderr, flush=True)


def _best_of(fn, repeat: int = 2) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def preranked_vs_gseapy(n_genes: int = 2000, n_features: int = 20, n_sets: int = 40,
                        n_perm: int = 1000) -> dict:
    import gseapy

    from bioviz.interpret.enrichment import preranked

    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(n_genes)]
    scores = pd.DataFrame(rng.normal(size=(n_genes, n_features)), index=genes,
                          columns=[f"f{j}" for j in range(n_features)])
    sets = {f"S{k}": list(rng.choice(genes, int(rng.integers(15, 200)), replace=False))
            for k in range(n_sets)}
    for j in range(0, n_features, 2):  # planted: half the features rank a set at the top
        scores.loc[sets[f"S{j % n_sets}"], f"f{j}"] += 0.8
    t_ours, ours = _best_of(lambda: preranked(scores, sets, n_permutations=n_perm, progress=False))

    def peer():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return gseapy.prerank(rnk=scores, gene_sets=sets, permutation_num=n_perm, min_size=5,
                                  max_size=1000, seed=7, outdir=None, no_plot=True, threads=1).res2d

    t_peer, ref = _best_of(peer, repeat=1)
    ref = ref.set_index(["Name", "Term"])["ES"].astype(float)
    mine = ours.set_index(["feature", "set"])["es"].reindex(ref.index)
    rel = float(np.max(np.abs(mine.to_numpy() - ref.to_numpy()) / np.abs(ref.to_numpy())))
    _say(f"preranked: bioviz {t_ours:.2f} s, gseapy {t_peer:.2f} s, {len(ref)} feature × set rows")
    return {"preranked_vs_gseapy_speedup": t_peer / t_ours, "preranked_vs_gseapy_max_rel_es_diff": rel}


def tomtom_vs_memelite(n_queries: int = 20) -> dict:
    from memelite import tomtom as meme_tomtom
    from pyjaspar import jaspardb

    from bioviz.interpret.motifs import tomtom

    ms = jaspardb(release="JASPAR2026").fetch_motifs(collection="CORE", tax_group="vertebrates")
    mats = [np.array([m.counts[b] for b in "ACGT"], dtype=float) for m in ms]
    mats = [m / m.sum(0) for m in mats]
    rng = np.random.default_rng(0)
    queries = []
    for i in rng.choice(len(mats), n_queries // 2, replace=False):
        m = mats[int(i)]
        q = m[:, 1:-1] if m.shape[1] > 8 else m  # trimmed
        if rng.random() < 0.5:
            q = q[::-1, ::-1]  # the other strand
        q = 0.8 * q + 0.2 * rng.dirichlet(np.ones(4), q.shape[1]).T  # noised
        queries.append(np.ascontiguousarray(q))
    queries += [rng.dirichlet(np.full(4, 0.7), int(rng.integers(6, 16))).T
                for _ in range(n_queries - len(queries))]
    meme_tomtom(queries[:1], mats, n_target_bins=None, n_jobs=1)  # numba compiles here
    t_ours, ours = _best_of(lambda: [tomtom(q, mats) for q in queries])
    t_peer, ref = _best_of(lambda: meme_tomtom(queries, mats, n_target_bins=None, n_jobs=1))
    p_ref = np.asarray(ref[0])  # p-values [queries, targets]
    agree = np.mean([int(np.argmin(o["p"].to_numpy())) == int(np.argmin(p_ref[i]))
                     for i, o in enumerate(ours)])
    _say(f"tomtom: bioviz {t_ours:.2f} s, memelite {t_peer:.2f} s, {n_queries} queries × {len(mats)} targets")
    return {"tomtom_vs_memelite_speedup": t_peer / t_ours,
            "tomtom_vs_memelite_top_match_agreement": float(agree)}


def run() -> dict:
    out = preranked_vs_gseapy()
    out.update(tomtom_vs_memelite())
    return out
