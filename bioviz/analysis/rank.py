"""Candidates: which features to take forward, their reproduction in other seeds'
dictionaries, and the documented rule that ranks them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..errors import InputError

#: how candidates are chosen and ranked (written to the manifest, shown in the report)
RANKING_RULE = (
    "A candidate is a feature × label whose primary test (the covariate model when covariates "
    "are given, else the rank test; Kruskal–Wallis for categorical labels, Cox for survival) has "
    "discovery q < alpha. Candidates are ranked by evidence tier, then q (ascending), then effect "
    "size |effect − null| (descending). The tier counts the independent checks passed: "
    "replicated on held-out subjects (held-out BH q < alpha, same direction); reproduced in at "
    "least half of the other seeds' dictionaries (best decoder match re-tested: p < alpha, same "
    "direction); selected in at least half of the subject bootstraps (stability >= 0.5)."
)
#: a matched feature in another seed's dictionary counts as the same feature at this cosine
SEED_COSINE = 0.7


def rank(table: pd.DataFrame, *, alpha: float, seeds: pd.DataFrame | None = None) -> pd.DataFrame:
    """Candidate rows of ``table`` ranked by :data:`RANKING_RULE` (``rank`` 1 first).

    Every number is copied from the association row it came from (``association_row``
    indexes ``associations.parquet``), or from ``seeds`` (one row per candidate × seed).
    """
    cand = table[table["primary"] & (table["q"] < alpha)].copy()
    cand.insert(0, "association_row", cand.index.to_numpy())
    if seeds is not None and len(seeds):
        per = seeds.groupby("association_row").agg(
            n_seeds=("seed", "nunique"), seeds_reproduced=("reproduced", "sum"),
            seed_match_cosine=("cosine", "mean"))
        cand = cand.join(per, on="association_row")
        share = cand["seeds_reproduced"] / cand["n_seeds"]
        seed_ok = (share >= 0.5).fillna(False).to_numpy()
    else:
        cand["n_seeds"], cand["seeds_reproduced"], cand["seed_match_cosine"] = 0, 0, np.nan
        seed_ok = np.zeros(len(cand), bool)
    replicated = cand["replicated"].fillna(False).to_numpy(bool) if "replicated" in cand else np.zeros(len(cand), bool)
    stable = (cand["stability"] >= 0.5).fillna(False).to_numpy(bool)
    cand["tier"] = replicated.astype(int) + seed_ok.astype(int) + stable.astype(int)
    cand["abs_effect"] = (cand["effect"] - cand["null"]).abs()
    cand = cand.sort_values(["tier", "q", "abs_effect", "feature"], ascending=[False, True, False, True],
                            kind="stable")
    cand["rank"] = np.arange(1, len(cand) + 1)
    front = ["rank", "feature", "label", "contrast", "test", "effect_name", "effect", "ci_low", "ci_high",
             "q", "p_fwer", "replicated", "stability", "seeds_reproduced", "n_seeds", "tier"]
    return cand[[c for c in front if c in cand] + [c for c in cand if c not in front]].reset_index(drop=True)


def reproduce_in_seeds(table: pd.DataFrame, seeds: list, *, decoder: np.ndarray, source: dict, runners: dict,
                       subjects: pd.Index, alpha: float, aggregate_kwargs: dict, progress: bool) -> pd.DataFrame:
    """For every provisional candidate (primary test, q < alpha), its best decoder match in
    each other seed's dictionary, re-tested with the same test on the same subjects
    (``runners[(label, contrast, test)](X)``: the discovery test on a subjects × features X).

    A dictionary trained with another seed is another dictionary: a candidate that exists
    in one seed only is fragile. Returns one row per candidate × seed: ``association_row``,
    ``seed`` (the checkpoint), ``match`` (feature name there), ``cosine``, ``effect``, ``p``,
    ``reproduced`` (cosine >= 0.7, p < alpha, same direction).
    """
    from ..sae import load_sae
    from .aggregate import aggregate

    cand = table[table["primary"] & (table["q"] < alpha)]
    if not len(cand):
        return pd.DataFrame(columns=["association_row", "seed", "match", "cosine", "effect", "p", "reproduced"])
    if not source.get("store"):
        raise InputError("seeds: the activation store the features came from is unknown, so the other "
                         "seeds' dictionaries cannot be applied; give store=")
    names = list(table["feature"].drop_duplicates())
    index = {f: i for i, f in enumerate(names)}
    unit = decoder / np.linalg.norm(decoder, axis=1, keepdims=True).clip(1e-12)
    rows = []
    for path in tqdm(seeds, desc="seeds", unit="dictionary", disable=not progress):
        other = load_sae(path) if isinstance(path, (str, Path)) else path
        w = other.W_dec.detach().double().cpu().numpy()
        if w.shape[1] != decoder.shape[1]:
            raise InputError(f"seeds: {path} reads d_in={w.shape[1]}, the tested dictionary d_in="
                             f"{decoder.shape[1]}: give dictionaries of the same layer")
        w = w / np.linalg.norm(w, axis=1, keepdims=True).clip(1e-12)
        subj = aggregate(sae=other, store=source["store"], layer=source["layer"], progress=progress,
                         **aggregate_kwargs)
        missing = subjects.difference(subj.obs_names)
        if len(missing):
            raise InputError(f"seeds: {path} gives no rows for {len(missing)} subjects (e.g. {list(missing[:3])})")
        Xs = np.asarray(subj[subjects].X, dtype=np.float64)
        for key, group in cand.groupby(["label", "contrast", "test"], sort=False):
            feats = np.array([index[f] for f in group["feature"]])
            cos = unit[feats] @ w.T
            best = cos.argmax(1)
            res = runners[key](Xs[:, best])
            same = np.sign(res.effect - res.null) == np.sign(group["effect"].to_numpy() - res.null)
            best_cos = cos[np.arange(len(best)), best]
            rows.append(pd.DataFrame({
                "association_row": group.index.to_numpy(), "seed": str(path),
                "match": [str(subj.var_names[j]) for j in best], "cosine": best_cos,
                "effect": res.effect, "p": res.p,
                "reproduced": (best_cos >= SEED_COSINE) & (res.p < alpha) & same}))
    return pd.concat(rows, ignore_index=True)
