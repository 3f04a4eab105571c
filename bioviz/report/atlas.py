"""The feature atlas: one static page listing every feature of the dictionary for the lab —
how often and how strongly it fires, its best association with each label, whether it is a
candidate, what the interpretation says it is, its top genes or tokens, motifs, top examples
(de-identified) and figures — searchable and sortable in the browser, with no server and no
outside request (it opens from a USB stick).

The page is built in the browser from one JSON block (``{{ data|tojson }}``), so a dictionary
of 16k features costs one pass over the codes and a few MB of JSON, not 16k rendered
sections; the script builds every element with ``textContent`` (never markup from data).

Everything per feature is computed in two streaming passes over row blocks of the sparse
codes (never a dense rows × features array): counts, sums, the top rows and the gene sums in
the first, the histogram (whose bins need each feature's maximum) in the second.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from markupsafe import Markup

from ..analysis import Findings
from ..errors import InputError, positive_int
from ..features import open_feature_table
from ..interpret import Interpretation
from ..interpret.examples import safe_name
from .content import RUO
from .deidentify import Pseudonyms, deidentify, scrub

__all__ = ["atlas_html", "N_BINS", "TOP_GENES", "MIN_TOKENS", "TOKEN_KEYS"]

N_BINS = 20  # histogram bins over (0, max]: enough to see a tail, small for 16k features
TOP_GENES = 5
#: as :func:`bioviz.interpret.genes.token_genes`: a gene seen in fewer tokens has a noisy mean,
#: and the atlas should name the genes the interpretation names
MIN_TOKENS = 5
#: row columns naming the token a row is (gene-token rows; a language model's tokens)
TOKEN_KEYS = ("gene", "token")
#: row columns holding sample ids (the interpretation's examples call it ``sample``)
SAMPLE_KEYS = ("sample_id", "sample")
PAGE_ROWS = 200  # rows the page renders before "show more" (16k rows would stall a browser)
_SPARSE_ROWS = 1 << 16  # rows per block of a sparse X
_CELLS = 1 << 24  # elements per block of a dense X (64 MB of float32)
_PNG = b"\x89PNG\r\n\x1a\n"
_SIG = 4  # significant digits kept in the page's JSON (the TSV keeps full precision)


def atlas_html(features, findings, interpretation, pseudonyms, *, env, title, generated, version,
               identifying=(), subject_key="subject_id", n_examples=5) -> tuple[str, pd.DataFrame]:
    """The atlas page and its table (one row per feature).

    Parameters
    ----------
    features
        The FeatureTable (AnnData or its ``.h5ad`` path; rows × features, sparse codes) or
        None: then only what the Findings and the interpretation know (every feature of
        ``findings.subjects``; activations, top genes and examples of interpreted features).
    findings
        The :class:`~bioviz.analysis.Findings`: best association per label, candidate rank.
    interpretation
        The :class:`~bioviz.interpret.Interpretation` (descriptions, motifs, figures) or None.
    pseudonyms
        The report's :class:`~bioviz.report.Pseudonyms`: example rows show subjects (and
        sample ids, and ids embedded in other columns such as cell ids) by pseudonym.
    env
        The report's Jinja2 environment (:func:`bioviz.report.templates.environment`);
        ``atlas.html.j2`` is rendered from it (a lab's own overrides the shipped one).
    title, generated, version
        Shown in the page's header.
    identifying
        Row columns never shown (names, record numbers); those absent from the rows are ignored
        (they may be subject-level columns).
    subject_key
        The row column naming each row's subject.
    n_examples
        Top rows shown per feature.

    Returns
    -------
    html, table
        The page, and ``feature, density, mean_activation, max_activation, n_rows_firing``,
        per label ``q_<label>, effect_<label>, effect_name_<label>`` (its best test: the primary
        one, else the lowest q), ``candidate_rank, candidate_label, description, top_genes,
        motifs`` (text), full precision.
    """
    if not isinstance(findings, Findings):
        raise InputError(f"findings: expected a bioviz Findings (bioviz.associate), got {type(findings).__name__}")
    if interpretation is not None and not isinstance(interpretation, Interpretation):
        raise InputError("interpretation: expected a bioviz Interpretation (bioviz.interpret or "
                         f"Interpretation.read(folder)) or None, got {type(interpretation).__name__}")
    if not isinstance(pseudonyms, Pseudonyms):
        raise InputError(f"pseudonyms: expected a bioviz.report.Pseudonyms, got {type(pseudonyms).__name__}")
    n_examples = positive_int(n_examples, "n_examples")
    identifying = [str(c) for c in identifying]
    ft, opened = _open(features)
    try:
        # refused before the pass over the codes: Findings of another dictionary
        names = pd.Index((ft if ft is not None else findings.subjects).var_names.astype(str))
        _same_dictionary(names, findings, interpretation, ft is not None)
        if ft is not None:
            stats, examples, rows = _from_rows(ft, n_examples, pseudonyms, subject_key, identifying)
        else:
            stats, examples, rows = _from_interpretation(names, interpretation, n_examples, pseudonyms,
                                                         identifying)
    finally:
        if opened:
            ft.file.close()
    labels, best = _best_associations(findings, names)
    cand = _candidates(findings, names)
    desc = _descriptions(interpretation, names)
    motifs = _motifs(interpretation, names)
    table = _table(names, stats, labels, best, cand, desc, motifs)
    alpha = float(findings.manifest.get("settings", {}).get("alpha", 0.05))
    data = _page_data(names, stats, labels, best, cand, desc, motifs, examples, rows,
                      _figures(interpretation, names), alpha)
    # the page's own code, allowed by its hash alone: a script that escaped escaping (or an
    # inline event handler) would not run even then
    script = env.get_template("atlas.js").render()
    script_hash = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    html = env.get_template("atlas.html.j2").render(
        title=str(title), generated=str(generated), version=str(version), banner=RUO, data=data,
        n_features=len(names), n_candidates=int(cand["rank"].notna().sum()),
        n_interpreted=int(desc.notna().sum()), page_rows=PAGE_ROWS, script=Markup(script),
        script_hash=script_hash)
    return html, table


# ------------------------------------------------------------------ inputs


def _open(features) -> tuple[ad.AnnData | None, bool]:
    if features is None or isinstance(features, ad.AnnData):
        if features is not None and features.X is None:
            raise InputError("features: the AnnData has no X; expected a FeatureTable (SAE codes)")
        return features, False
    if isinstance(features, (str, os.PathLike)):
        return open_feature_table(features), True
    raise InputError(f"features: expected a FeatureTable (AnnData or .h5ad path) or None, got "
                     f"{type(features).__name__}")


def _same_dictionary(names: pd.Index, findings: Findings, interpretation, from_rows: bool) -> None:
    """The Findings and the interpretation must be about this dictionary's features."""
    where = "the FeatureTable" if from_rows else "the Findings' subjects table"
    for what, feats in (("the Findings", findings.table.get("feature", pd.Series(dtype=str))),
                        ("the interpretation", None if interpretation is None else interpretation.features["feature"])):
        if feats is None:
            continue
        extra = sorted(set(map(str, feats)) - set(names))
        if extra:
            raise InputError(f"{what} name feature(s) {', '.join(extra[:5])} that {where} lacks ({len(names)} "
                             f"features, {names[0] if len(names) else '-'}..{names[-1] if len(names) else '-'}); "
                             "were they made from another SAE's FeatureTable?")


# ------------------------------------------------------------------ the codes


def _blocks(X, n: int, d: int):
    """``(first row, CSR block)`` over the rows; a dense or backed X a block at a time."""
    sparse = sp.issparse(X) or getattr(X, "format", None) in ("csr", "csc")  # or backed sparse
    step = _SPARSE_ROWS if sparse else max(1, _CELLS // max(d, 1))
    for a in range(0, n, step):
        block = X[a:min(a + step, n)]
        block = block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
        block.sum_duplicates()
        yield a, block


def _fired(a: int, block: sp.csr_matrix):
    """Row positions, feature columns and values of the block's entries > 0 (a feature
    "fires" on a row when its code is positive)."""
    rows = np.repeat(np.arange(a, a + block.shape[0]), np.diff(block.indptr))
    keep = block.data > 0
    return rows[keep], block.indices[keep], block.data[keep].astype(np.float64)


def _top_n(cols, vals, rows, n: int):
    """Per feature, its ``n`` largest values (ties: the earlier row), feature-major order."""
    o = np.argsort(-vals, kind="stable")  # rows come in ascending order: stable keeps ties by row
    o = o[np.argsort(cols[o], kind="stable")]
    cols, vals, rows = cols[o], vals[o], rows[o]
    first = np.r_[True, cols[1:] != cols[:-1]] if len(cols) else np.zeros(0, bool)
    start = np.maximum.accumulate(np.where(first, np.arange(len(cols)), 0))
    keep = np.arange(len(cols)) - start < n
    return cols[keep], vals[keep], rows[keep]


def _from_rows(ft: ad.AnnData, n_examples: int, pseudonyms, subject_key, identifying):
    if subject_key not in ft.obs.columns:
        raise InputError(f"subject_key={subject_key!r} is not a row column of the FeatureTable; its columns: "
                         f"{', '.join(map(str, ft.obs.columns))}")
    n, d = ft.shape
    token_key = next((k for k in TOKEN_KEYS if k in ft.obs.columns), None)
    if token_key is not None:
        tok = ft.obs[token_key].astype(object)
        tok = tok.where(tok.notna() & (tok.astype(str) != ""), None)  # non-gene tokens (CLS, pad) are ""
        codes, vocab = pd.factorize(tok)
        vocab = np.asarray(vocab, dtype=object).astype(str)
        n_tokens = np.bincount(codes[codes >= 0], minlength=len(vocab))
        gsum = sp.csr_matrix((len(vocab), d))
    count, total = np.zeros(d, np.int64), np.zeros(d)
    top = []
    for a, block in _blocks(ft.X, n, d):
        r, c, v = _fired(a, block)
        count += np.bincount(c, minlength=d)
        total += np.bincount(c, weights=v, minlength=d)
        top.append(_top_n(c, v, r, n_examples))
        if token_key is not None:
            code = codes[a:a + block.shape[0]]
            ok = np.flatnonzero(code >= 0)
            onto = sp.csr_matrix((np.ones(len(ok)), (code[ok], ok)), shape=(len(vocab), block.shape[0]))
            pos = sp.csr_matrix((np.maximum(block.data, 0), block.indices, block.indptr), shape=block.shape)
            gsum = gsum + onto @ pos
    c, v, r = (np.concatenate(x) for x in zip(*top)) if top else (np.zeros(0, int), np.zeros(0), np.zeros(0, int))
    c, v, r = _top_n(c, v, r, n_examples)
    peak = np.zeros(d)  # each feature's maximum: the first (largest) of its top rows
    first = np.r_[True, c[1:] != c[:-1]] if len(c) else np.zeros(0, bool)
    peak[c[first]] = v[first]
    hist = np.zeros(d * N_BINS, np.int64)
    for a, block in _blocks(ft.X, n, d):  # second pass: the bins need each feature's maximum
        _, cc, vv = _fired(a, block)
        b = np.minimum((vv / peak[cc] * N_BINS).astype(np.int64), N_BINS - 1)
        hist += np.bincount(cc * N_BINS + b, minlength=d * N_BINS)
    stats = pd.DataFrame({"density": count / n if n else np.nan, "mean_activation": total / n if n else np.nan,
                          "max_activation": peak, "n_rows_firing": count}, index=pd.Index(ft.var_names.astype(str)))
    stats["hist"] = hist.reshape(d, N_BINS).tolist()
    stats["genes"] = _top_genes(gsum, n_tokens, vocab, d) if token_key is not None else [[] for _ in range(d)]
    positions = np.unique(r)
    rows = _shown_rows(ft.obs.iloc[positions], pseudonyms, subject_key, identifying)
    rows.attrs["position"] = positions.tolist()  # where each lies in the FeatureTable: ft[position]
    at = np.searchsorted(positions, r)
    examples = [[] for _ in range(d)]
    for j, i, val in zip(c.tolist(), at.tolist(), _sig(v)):
        examples[j].append((i, val))
    return stats, examples, rows


def _top_genes(gsum: sp.csr_matrix, n_tokens, vocab, d: int) -> list[list[tuple[str, float]]]:
    """Per feature, the ``TOP_GENES`` tokens of highest mean activation (zeros included, over
    the token's rows; tokens seen fewer than ``MIN_TOKENS`` times left out; ties by name)."""
    m = gsum.tocoo()
    mean = m.data / n_tokens[m.row]
    keep = (n_tokens[m.row] >= MIN_TOKENS) & (mean > 0)
    g, c, mean = m.row[keep], m.col[keep], mean[keep]
    name_rank = np.argsort(np.argsort(vocab, kind="stable"), kind="stable")
    o = np.argsort(name_rank[g], kind="stable")
    o = o[np.argsort(-mean[o], kind="stable")]
    o = o[np.argsort(c[o], kind="stable")]
    g, c, mean = g[o], c[o], mean[o]
    first = np.r_[True, c[1:] != c[:-1]] if len(c) else np.zeros(0, bool)
    start = np.maximum.accumulate(np.where(first, np.arange(len(c)), 0))
    keep = np.arange(len(c)) - start < TOP_GENES
    out = [[] for _ in range(d)]
    for j, gene, val in zip(c[keep].tolist(), vocab[g[keep]].tolist(), _sig(mean[keep])):
        out[j].append((gene, val))
    return out


def _shown_rows(obs: pd.DataFrame, pseudonyms, subject_key, identifying) -> pd.DataFrame:
    """The example rows as a report may show them: subject by pseudonym, dates to years, ages
    capped, free text and identifying columns left out (:func:`deidentify`), then every subject
    or sample id left in a value (a sample id column, a cell id ``S01-c3`` that embeds its
    subject) replaced by its pseudonym (:func:`scrub`). Obs names are not shown (they often
    embed ids); a row is found again by its position."""
    obs = obs.reset_index(drop=True)
    ids = set(obs[subject_key].dropna().astype(str))
    for c in SAMPLE_KEYS:  # a sample id identifies a person as well as a subject id does
        if c in obs.columns:
            ids |= set(obs[c].dropna().astype(str))
    drop = [c for c in identifying if c in obs.columns]
    shown, _ = deidentify(obs, pseudonyms, subject_key=subject_key, identifying=drop)
    return scrub(shown, pseudonyms, ids)


def _from_interpretation(names, interpretation, n_examples, pseudonyms, identifying):
    """Without the FeatureTable: what the interpretation measured for its features."""
    stats = pd.DataFrame(np.nan, index=names, columns=["density", "mean_activation", "max_activation",
                                                       "n_rows_firing"])
    genes: dict[str, list] = {}
    examples = [[] for _ in names]
    rows = pd.DataFrame()
    summary = None if interpretation is None else interpretation.tables.get("summary")
    if summary is not None and len(summary):
        s = summary.assign(feature=summary["feature"].astype(str)).drop_duplicates("feature").set_index("feature")
        s = s[s.index.isin(names)]
        for col in stats.columns:
            if col in s:
                stats.loc[s.index, col] = s[col].astype(float)
    top = None if interpretation is None else interpretation.tables.get("top_genes")
    if top is not None and len(top):
        top = top.sort_values(["feature", "rank"], kind="stable").groupby("feature", sort=False).head(TOP_GENES)
        for f, part in top.groupby(top["feature"].astype(str), sort=False):
            genes[f] = list(zip(part["gene"].astype(str), _sig(part["mean_activation"])))
    stats["hist"] = [[] for _ in names]
    stats["genes"] = [genes.get(f, []) for f in names]
    ex = None if interpretation is None else interpretation.tables.get("examples")
    if ex is not None and len(ex) and "subject" in ex:
        ex = ex.sort_values(["feature", "rank"], kind="stable").groupby("feature", sort=False).head(n_examples)
        ex = ex.reset_index(drop=True)
        # the interpretation's ``row`` is the obs name: not shown (it often embeds the subject)
        rows = _shown_rows(ex.drop(columns=["feature", "rank", "row", "activation"], errors="ignore"),
                           pseudonyms, "subject", identifying)
        pos = {f: i for i, f in enumerate(names)}
        for i, (f, val) in enumerate(zip(ex["feature"].astype(str), _sig(ex["activation"]))):
            if f in pos:
                examples[pos[f]].append((i, val))
    return stats, examples, rows


# ------------------------------------------------------------------ findings, interpretation


def _best_associations(findings: Findings, names) -> tuple[list[str], dict[str, pd.DataFrame]]:
    """Per label, each feature's best test: its primary one, else the lowest q (then p)."""
    t = findings.table
    if t is None or not len(t):
        return [], {}
    t = t.assign(feature=t["feature"].astype(str), label=t["label"].astype(str),
                 _primary=t["primary"].astype(bool) if "primary" in t else False)
    by = ["_primary"] + [c for c in ("q", "p") if c in t]
    t = t.sort_values(by, ascending=[False] + [True] * (len(by) - 1), na_position="last", kind="stable")
    t = t.drop_duplicates(["feature", "label"])
    labels = [str(x) for x in pd.unique(findings.table["label"].astype(str))]
    cols = [c for c in ("effect", "effect_name", "q", "ci_low", "ci_high", "test", "contrast") if c in t]
    return labels, {lab: t[t["label"] == lab].set_index("feature")[cols].reindex(names) for lab in labels}


def _candidates(findings: Findings, names) -> pd.DataFrame:
    c = findings.candidates
    out = pd.DataFrame({"rank": np.nan, "label": None}, index=names)
    if c is None or not len(c):
        return out
    c = c.sort_values("rank", kind="stable").drop_duplicates("feature")
    c = c.set_index(c["feature"].astype(str))
    out.loc[c.index, "rank"] = c["rank"].astype(float)
    out.loc[c.index, "label"] = c["label"].astype(str)
    return out


def _descriptions(interpretation, names) -> pd.Series:
    if interpretation is None or not len(interpretation.features):
        return pd.Series(None, index=names, dtype=object)
    f = interpretation.features.drop_duplicates("feature")
    return f.set_index(f["feature"].astype(str))["description"].astype(object).reindex(names)


def _motifs(interpretation, names) -> dict[str, list[dict]]:
    """Per feature, up to 5 motifs, most significant first (a discovered motif with its best
    JASPAR match when it has one)."""
    t = None if interpretation is None else interpretation.tables.get("motifs")
    if t is None or not len(t) or "feature" not in t:
        return {}
    t = t.assign(feature=t["feature"].astype(str))
    if "q" in t:
        t = t.sort_values("q", na_position="last", kind="stable")
    keys = [c for c in ("matrix_id", "consensus") if c in t]
    t = t.drop_duplicates(["feature", *keys]) if keys else t
    out = {}
    for f, part in t.groupby("feature", sort=False):
        out[f] = [{"id": _text(r.get("matrix_id")), "name": _text(r.get("name")),
                   "consensus": _text(r.get("consensus")), "q": _num(r.get("q"))}
                  for r in part.head(5).to_dict("records")]
    return out


def _figures(interpretation, names) -> dict[str, list[tuple[str, str]]]:
    """Per interpreted feature, its PNG figures as ``data:`` URIs: ``features/<f>/`` (histogram,
    genes, enrichment, ablation), the motif logo, and the group-mean maps. Per-scan map
    montages are left out: their titles draw a sample id into the pixels, where no text
    check can find it, and they show one person's anatomy."""
    out: dict[str, list[tuple[str, str]]] = {}
    if interpretation is None or interpretation.path is None:
        return out
    root = Path(interpretation.path)
    for f in interpretation.features["feature"].astype(str):
        if f not in names:
            continue
        safe = safe_name(f)
        paths = sorted((root / "features" / safe).glob("*.png"))
        paths += sorted((root / "maps" / safe).glob("group_*.png"))
        paths += [p for p in [root / f"motif_logo_{safe}.png"] if p.is_file()]
        figs = []
        for p in paths:
            data = p.read_bytes()
            if data.startswith(_PNG):  # only what is a PNG is inlined as one
                title = "motif logo" if p.name.startswith("motif_logo_") else p.stem.replace("_", " ")
                figs.append((title, "data:image/png;base64," + base64.b64encode(data).decode("ascii")))
        if figs:
            out[f] = figs
    return out


# ------------------------------------------------------------------ outputs


def _text(v) -> str | None:
    return None if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)


def _num(v) -> float | None:
    """A number for the page's JSON: ``_SIG`` significant digits, None for NaN (not JSON)."""
    if v is None or isinstance(v, str):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x):
        return None
    return float(f"{x:.{_SIG}g}")


def _sig(values) -> list:
    """``_num`` over an array, vectorised (16k features)."""
    x = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = 10.0 ** (_SIG - 1 - np.floor(np.log10(np.abs(x))))
        r = np.where(x == 0, 0.0, np.round(x * scale) / scale)
    return [v if math.isfinite(v) else None for v in r.tolist()]


def _table(names, stats, labels, best, cand, desc, motifs) -> pd.DataFrame:
    t = pd.DataFrame({"feature": list(names)})
    for c in ("density", "mean_activation", "max_activation", "n_rows_firing"):
        t[c] = stats[c].to_numpy()
    for lab in labels:
        b = best[lab]
        t[f"q_{lab}"] = b["q"].to_numpy() if "q" in b else np.nan
        t[f"effect_{lab}"] = b["effect"].to_numpy() if "effect" in b else np.nan
        t[f"effect_name_{lab}"] = b["effect_name"].to_numpy() if "effect_name" in b else None
    t["candidate_rank"] = pd.array(cand["rank"].to_numpy(), dtype="Int64")
    t["candidate_label"] = cand["label"].to_numpy()
    t["description"] = desc.to_numpy()
    t["top_genes"] = [", ".join(g for g, _ in genes) for genes in stats["genes"]]
    t["motifs"] = ["; ".join(" ".join(x for x in (m["name"], f"({m['id']})" if m["id"] else None,
                                                  m["consensus"]) if x) for m in motifs.get(f, []))
                   for f in names]
    return t


def _cell(v) -> str:
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


def _page_data(names, stats, labels, best, cand, desc, motifs, examples, rows, figures, alpha) -> dict:
    """What the page's script reads. Short keys: 16k features of it are embedded."""
    cols = {c: _sig(stats[c]) for c in ("density", "mean_activation", "max_activation")}
    firing = [None if pd.isna(x) else int(x) for x in stats["n_rows_firing"]]
    assoc = {}
    for lab in labels:
        b = best[lab]
        none = [None] * len(names)
        q, e, lo, hi = (_sig(b[k]) if k in b else none for k in ("q", "effect", "ci_low", "ci_high"))
        text = {k: [_text(v) for v in b[k]] if k in b else [None] * len(names)
                for k in ("effect_name", "test", "contrast")}
        assoc[lab] = (q, e, lo, hi, text)
    ranks = [None if pd.isna(x) else int(x) for x in cand["rank"]]
    # plain lists: pandas indexing per feature costs more than the rest of the page (16k features)
    hists, genes = stats["hist"].tolist(), stats["genes"].tolist()
    cand_labels, descs = [_text(x) for x in cand["label"]], [_text(x) for x in desc]
    feats = []
    for i, f in enumerate(names):
        a = []
        for lab in labels:
            q, e, lo, hi, text = assoc[lab]
            a.append(None if q[i] is None and e[i] is None else {
                "q": q[i], "e": e[i], "lo": lo[i], "hi": hi[i], "en": text["effect_name"][i],
                "t": text["test"][i], "c": text["contrast"][i]})
        feats.append({
            "n": f, "d": cols["density"][i], "m": cols["mean_activation"][i], "x": cols["max_activation"][i],
            "k": firing[i], "h": hists[i], "g": [list(x) for x in genes[i]],
            "a": a, "r": ranks[i], "rl": cand_labels[i], "desc": descs[i],
            "mo": motifs.get(f, []), "ex": [list(x) for x in examples[i]],
            "fig": [list(x) for x in figures.get(f, [])],
        })
    row_cols = [str(c) for c in rows.columns]
    values = [[_cell(v) for v in rows[c].tolist()] for c in rows.columns] if len(rows.columns) else []
    return {"labels": labels, "alpha": alpha, "bins": N_BINS, "features": feats,
            "rows": {"columns": row_cols, "values": [list(r) for r in zip(*values)] if values else [],
                     "position": rows.attrs.get("position")}}
