"""Motif evidence of SAE features on DNA: the stretches of sequence where a feature fires most,
the motifs they share against stretches where it does not fire, and which JASPAR matrices
those motifs are.

- :func:`row_windows`: the DNA each activation row saw, ± a flank, on the strand the model saw
  it, with the window's genome coordinates.
- :func:`motif_evidence`: per feature, its top fired windows (``windows``), the motifs they
  share against seeded background windows (``background_windows``), matched to JASPAR
  (``motifs``, ``motif_pwms``), and a sequence logo of the best motif above its best match.
- :func:`draw_logo` and :func:`plot_motif_match`: information-content logos (matplotlib only).

:meth:`SequenceAdapter.evidence <bioviz.adapters.sequence.SequenceAdapter.evidence>` calls
:func:`motif_evidence`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy.stats import hypergeom
from tqdm.auto import tqdm

from bioviz.errors import InputError, positive_int
from bioviz.interpret.examples import feature_list, read_columns, safe_name
from bioviz.interpret.motifs import discover, jaspar_matrices, match_jaspar

from .adapter import _Window

__all__ = ["WINDOW_COLUMNS", "MOTIF_COLUMNS", "PWM_COLUMNS", "row_windows", "motif_evidence",
           "draw_logo", "plot_motif_match"]

#: columns of the ``windows`` and ``background_windows`` tables (plus the ``label`` column when
#: one is given)
WINDOW_COLUMNS = ("feature", "rank", "row", "subject_id", "sample_id", "seq_id", "chrom", "start",
                  "end", "strand", "row_start", "row_end", "activation", "sequence")
#: columns of the ``motifs`` table
MOTIF_COLUMNS = ("feature", "motif", "rank", "match_rank", "consensus", "seed", "width", "n_fired",
                 "n_sites", "fired_share", "n_background", "n_background_sites",
                 "background_share", "site_p", "discovery_p", "discovery_q", "matrix_id", "name",
                 "p", "q", "offset", "orientation", "overlap", "logo")
#: columns of the ``motif_pwms`` table
PWM_COLUMNS = ("feature", "motif", "position", "A", "C", "G", "T")

_KEY = ("subject_id", "sample_id", "seq_id", "chrom", "strand")  # which record a row is from
_CANDIDATES = 20  # top rows read per window kept: neighbouring rows share one site
_COLOURS = {"A": "#109648", "C": "#255C99", "G": "#F7B32B", "T": "#D62839"}


# ---------------------------------------------------------------------------------------------
# rows → the DNA they saw


def _records_frame(records) -> pd.DataFrame:
    return pd.DataFrame({
        "record": np.arange(len(records)),
        **{k: [str(getattr(r, k)) for r in records] for k in _KEY},
        "rec_start": np.array([r.start for r in records], dtype=np.int64),
        "rec_end": np.array([r.end for r in records], dtype=np.int64)})


def row_windows(adapter, obs: pd.DataFrame, *, flank: int = 25,
                sequences: bool = True) -> pd.DataFrame:
    """The DNA each activation row saw, widened by ``flank`` bases on each side.

    A row is found in the adapter's records (loaded by ``adapter.dataset(data)``) by its
    subject, sample, sequence name, chromosome and strand, and must lie inside that record.
    The window is read the way the model read it (from the record's sequence, or from the
    reference, reverse-complemented on the minus strand), clipped to the record.

    Parameters
    ----------
    adapter : SequenceAdapter
        After :meth:`~SequenceAdapter.dataset` on the data the rows came from.
    obs : pandas.DataFrame
        Rows as :meth:`SequenceAdapter.rows` made them: ``subject_id, sample_id, seq_id,
        chrom, start, end, strand`` (0-based, half-open genome coordinates).
    flank : int
        Bases added on each side of the row's span.
    sequences : bool
        Read the windows' sequences (False: coordinates only).

    Returns
    -------
    pandas.DataFrame
        Indexed like ``obs``: ``record`` (index into ``adapter.records``, -1 when the row
        cannot be mapped), ``a``, ``b`` (the window's offsets along the record's sequence as
        the model read it), ``start``, ``end`` (the window in genome coordinates), ``strand``,
        ``sequence`` (the window on the strand the model saw, 5'→3' as it read it) and
        ``reason`` (why a row could not be mapped, else None).
    """
    records = getattr(adapter, "records", None)
    if not records:
        raise InputError("the adapter has no records: call adapter.dataset(data) with the data "
                         "the rows came from (or pass data=)")
    flank = _non_negative(flank, "flank")
    missing = [c for c in (*_KEY, "start", "end") if c not in obs.columns]
    if missing:
        raise InputError(f"obs lacks {', '.join(missing)}: expected rows made by "
                         "SequenceAdapter.rows (subject_id, sample_id, seq_id, chrom, start, "
                         "end, strand)")
    rows = pd.DataFrame({k: obs[k].astype(str).to_numpy() for k in _KEY})
    rows["_row"] = np.arange(len(obs))
    rows["row_start"] = pd.to_numeric(obs["start"], errors="coerce").to_numpy()
    rows["row_end"] = pd.to_numeric(obs["end"], errors="coerce").to_numpy()
    recs = _records_frame(records)
    m = rows.merge(recs, on=list(_KEY), how="inner")
    m = m[(m.row_start >= m.rec_start) & (m.row_end <= m.rec_end) & (m.row_start < m.row_end)]
    n_key = rows.merge(recs[list(_KEY)], on=list(_KEY), how="inner").groupby("_row").size()
    n_in = m.groupby("_row").size()
    n_key = n_key.reindex(rows["_row"], fill_value=0).to_numpy()
    n_in = n_in.reindex(rows["_row"], fill_value=0).to_numpy()
    coords = np.isfinite(rows[["row_start", "row_end"]].to_numpy(float)).all(1)
    reason = np.select(
        [~coords, n_key == 0, n_in == 0, n_in > 1],
        ["no coordinates (start/end missing)",
         "no record of the data has this subject, sample, seq_id, chrom and strand",
         "the row's span lies outside its record in the data",
         "several records of the data hold this span (give each sequence a unique seq_id)"],
        default="")
    out = pd.DataFrame({"record": -1, "a": -1, "b": -1, "start": -1, "end": -1,
                        "strand": rows["strand"].to_numpy(), "sequence": None,
                        "reason": np.where(reason == "", None, reason)}, index=obs.index)
    one = m[m["_row"].isin(np.flatnonzero(n_in == 1))]
    at = one["_row"].to_numpy()
    minus = (one["strand"] == "-").to_numpy()
    rs, re_ = one["rec_start"].to_numpy(), one["rec_end"].to_numpy()
    s, e = one["row_start"].to_numpy(np.int64), one["row_end"].to_numpy(np.int64)
    # offsets along the sequence as the model read it (the minus strand runs from rec_end)
    a = np.where(minus, re_ - e, s - rs) - flank
    b = np.where(minus, re_ - s, e - rs) + flank
    a, b = np.maximum(a, 0), np.minimum(b, re_ - rs)
    g_start, g_end = np.where(minus, re_ - b, rs + a), np.where(minus, re_ - a, rs + b)
    cols = out.columns.get_indexer(["record", "a", "b", "start", "end"])
    out.iloc[at, cols] = np.c_[one["record"], a, b, g_start, g_end]
    if sequences:
        _read_sequences(adapter, out)
    return out


def _read_sequences(adapter, win: pd.DataFrame) -> None:
    """Fill ``sequence`` of the mapped rows, read the way the adapter reads a window."""
    ok = np.flatnonzero(win["record"].to_numpy() >= 0)
    seqs = [adapter._window_sequence(_Window(int(r), -1, int(a), int(b), int(a), int(b)))
            for r, a, b in win.iloc[ok][["record", "a", "b"]].itertuples(index=False)]
    win.iloc[ok, win.columns.get_loc("sequence")] = seqs


def _non_negative(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InputError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------
# choosing windows


def _distinct(chrom, start, end, limit: int) -> np.ndarray:
    """Greedy, in the order given: keep a window unless it overlaps one already kept (on the
    same chromosome, either strand: they share sequence), up to ``limit``."""
    kept, spans = [], defaultdict(list)
    for i, (c, s, e) in enumerate(zip(chrom, start, end)):
        if any(s < e2 and s2 < e for s2, e2 in spans[c]):
            continue
        spans[c].append((s, e))
        kept.append(i)
        if len(kept) == limit:
            break
    return np.array(kept, dtype=np.int64)


def _overlaps(chrom, start, end, chrom_f, start_f, end_f) -> np.ndarray:
    """Whether each interval overlaps any of the ``_f`` intervals on its chromosome."""
    if len(chrom_f) == 0 or len(chrom) == 0:
        return np.zeros(len(chrom), dtype=bool)
    codes, _ = pd.factorize(np.concatenate([np.asarray(chrom, str), np.asarray(chrom_f, str)]))
    key, key_f = codes[:len(chrom)], codes[len(chrom):]
    lo = min(start.min(), start_f.min())
    span = int(max(end.max(), end_f.max()) - lo + 1)
    # chromosomes laid end to end: one sorted sweep finds every overlap
    s_f = key_f * span + (start_f - lo)
    order = np.argsort(s_f, kind="stable")
    reach = np.maximum.accumulate((key_f * span + (end_f - lo))[order])
    i = np.searchsorted(s_f[order], key * span + (end - lo), side="left") - 1
    return (i >= 0) & (reach[np.maximum(i, 0)] > key * span + (start - lo))


def _unmapped(reasons: pd.Series) -> str:
    counts = reasons.dropna().value_counts()
    return "; ".join(f"{n} row{'s' * (n > 1)}: {why}" for why, n in counts.items())


# ---------------------------------------------------------------------------------------------
# evidence


def motif_evidence(adapter, table, features, *, data=None, subjects: pd.DataFrame | None = None,
                   label: str | None = None, n_top: int = 100, flank: int = 25,
                   n_background: int = 300, min_windows: int = 10, max_motifs: int = 3,
                   matches: int = 5, k=(6, 8), alpha: float = 0.05, db=None,
                   collection: str | None = "CORE", tax_group: str | None = "vertebrates",
                   seed: int = 0, out=None,
                   progress: bool = True) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """What the DNA where each feature fires most has in common, and which JASPAR motif it is.

    For each feature: its ``n_top`` highest-activation rows, each widened by ``flank`` bases
    (neighbouring rows over one site are kept once: the highest, its window not overlapping
    another kept one); up to ``n_background`` windows of rows where the feature is 0, drawn at
    random (seeded; 4 × ``n_background`` rows are drawn, and windows that share sequence with
    the top windows or with each other are dropped); motifs enriched in the
    fired windows (:func:`bioviz.interpret.motifs.discover`) and each one's closest JASPAR
    matrices (:func:`bioviz.interpret.motifs.match_jaspar`, Tomtom's way).

    Parameters
    ----------
    adapter : SequenceAdapter
        The adapter the rows were extracted with.
    table : anndata.AnnData
        The FeatureTable (rows as :meth:`SequenceAdapter.rows` made them, X the SAE codes; may
        be backed). A row fires when its code is > 0.
    features : str or list of str
        Feature names from ``table.var_names``.
    data
        The cohort the rows came from (FASTA, table, BED with the adapter's reference). None:
        the records the adapter last loaded.
    subjects, label
        The per-subject clinical table (index ``subject_id``) and a column of it: each window
        then carries its subject's ``label`` value.
    n_top, flank, n_background
        Fired windows per feature, bases on each side of a row's span, background windows.
    min_windows : int
        Fewest fired (and background) windows motif discovery is run on.
    max_motifs, matches : int
        Motifs discovered per feature, JASPAR matches kept per motif.
    k, alpha
        K-mer lengths and the BH level of discovery (see ``discover``).
    db, collection, tax_group
        The JASPAR selection (see ``match_jaspar``; default the newest release pyjaspar ships,
        CORE vertebrates).
    seed : int
        Seeds the background draw (each feature its own stream, whatever the others).
    out : pathlib.Path, optional
        Folder for the logos: ``motif_logo_<feature>.png`` and ``.svg``, the feature's best
        motif above its best JASPAR match.
    progress : bool
        Show a progress bar over features.

    Returns
    -------
    tables : dict of str to pandas.DataFrame
        ``windows`` and ``background_windows`` (:data:`WINDOW_COLUMNS`; background rows have
        activation 0 and ``rank`` in the order drawn), ``motifs`` (:data:`MOTIF_COLUMNS`) and
        ``motif_pwms`` (:data:`PWM_COLUMNS`); see :meth:`SequenceAdapter.evidence`.
    skipped : dict of str to str
        ``{"motifs:<feature>": why}`` for features without motif evidence (never fires, too few
        windows, nothing enriched), ``{"windows:<feature>": why}`` for top rows that could not
        be mapped back to the DNA, ``{"windows": why, "motifs": why}`` when no row can.

    Raises
    ------
    InputError
        A feature not in the table, a ``label`` not in ``subjects``, bad counts.
    """
    if not isinstance(table, ad.AnnData):
        raise InputError(f"table must be the FeatureTable (an AnnData), got {type(table).__name__}")
    names, idx = feature_list(features, table.var_names)
    opts = {"n_top": positive_int(n_top, "n_top"), "flank": _non_negative(flank, "flank"),
            "n_background": positive_int(n_background, "n_background"),
            "min_windows": positive_int(min_windows, "min_windows")}
    found_opts = {"max_motifs": positive_int(max_motifs, "max_motifs"),
                  "matches": positive_int(matches, "matches"), "k": k, "alpha": alpha, "db": db,
                  "collection": collection, "tax_group": tax_group}
    label_of = _label_of(subjects, label)
    extra = [label] if label_of is not None else []
    tables = {"windows": pd.DataFrame(columns=[*WINDOW_COLUMNS, *extra]),
              "background_windows": pd.DataFrame(columns=[*WINDOW_COLUMNS, *extra]),
              "motifs": pd.DataFrame(columns=list(MOTIF_COLUMNS)),
              "motif_pwms": pd.DataFrame(columns=list(PWM_COLUMNS))}
    missing = [c for c in (*_KEY, "start", "end") if c not in table.obs.columns]
    if missing:
        why = (f"the FeatureTable's rows have no {', '.join(missing)}: they are not DNA positions "
               "made by SequenceAdapter.rows, so they cannot be mapped back to sequence")
        return tables, {"windows": why, "motifs": why}
    if data is not None:
        adapter.dataset(data)
    elif not getattr(adapter, "records", None):
        why = ("no data= given and the adapter has loaded no records: pass the cohort the rows "
               "came from")
        return tables, {"windows": why, "motifs": why}
    cols = read_columns(table, names)
    parts: dict[str, list] = {name: [] for name in tables}
    skipped: dict[str, str] = {}
    for j, f in enumerate(tqdm(names, desc="motif evidence", disable=not progress)):
        rng = np.random.default_rng([seed, int(idx[j])])  # its own stream, whatever the others
        top, bg, found, why = _feature(adapter, cols, j, rng, skipped, **opts, **found_opts)
        for name, t in (("windows", top), ("background_windows", bg)):
            if t is not None:
                if label_of is not None:
                    t[label] = label_of.reindex(t["subject_id"]).to_numpy()
                parts[name].append(t)
        if why:
            skipped[f"motifs:{f}"] = why
            continue
        m_rows, m_pwms = found
        if out is not None:
            logo = _write_logo(Path(out), f, m_pwms, m_rows.iloc[0], db, collection, tax_group)
            m_rows.loc[m_rows["motif"] == 1, "logo"] = logo
        parts["motifs"].append(m_rows)
        parts["motif_pwms"].append(m_pwms)
    for name, got in parts.items():
        if got:
            tables[name] = pd.concat(got, ignore_index=True)
    return tables, skipped


def _feature(adapter, cols, j, rng, skipped, *, n_top, flank, n_background, min_windows,
             max_motifs, matches, k, alpha, db, collection, tax_group):
    """One feature's (top windows, background windows, (motif rows, PWM rows), why no motif);
    notes rows that could not be mapped in ``skipped``."""
    f, obs = cols.features[j], cols.obs
    fired, _ = cols.fired(j)
    if len(fired) == 0:
        return None, None, None, "never fires in the FeatureTable"
    rows, acts = cols.top(j, n_top * _CANDIDATES)
    win = row_windows(adapter, obs.iloc[rows], flank=flank, sequences=False)
    lost = win["reason"].notna()
    if lost.any():
        skipped[f"windows:{f}"] = (f"{lost.sum()} of its top {len(rows)} rows left out: "
                                   f"{_unmapped(win['reason'])}")
    ok = np.flatnonzero(~lost.to_numpy())
    keep = ok[_distinct(obs["chrom"].astype(str).to_numpy()[rows[ok]],
                        win["start"].to_numpy()[ok], win["end"].to_numpy()[ok], n_top)]
    win = win.iloc[keep].copy()
    _read_sequences(adapter, win)
    top = _window_table(f, obs.iloc[rows[keep]], acts[keep], win)
    if len(top) < min_windows:
        return top, None, None, (f"fires in only {len(top)} distinct mapped windows; motif "
                                 f"discovery needs min_windows={min_windows}")
    bg = _background(adapter, obs, fired, top, flank, n_background, rng)
    if len(bg) < min_windows:
        return top, bg, None, (f"only {len(bg)} background windows (rows where it does not "
                               f"fire, sharing no sequence with its top windows); need "
                               f"{min_windows}")
    found = discover(list(top["sequence"]), list(bg["sequence"]), k=k, top=max_motifs,
                     alpha=alpha, progress=False)
    if not found:
        return top, bg, None, (f"no k-mer enriched at q < {alpha:g} in its {len(top)} top "
                               f"windows against {len(bg)} background windows")
    motifs = _motif_rows(f, found, len(top), len(bg), matches, db, collection, tax_group)
    return top, bg, motifs, None


def _label_of(subjects, label):
    if label is None or subjects is None:
        return None
    if not isinstance(subjects, pd.DataFrame):
        raise InputError(f"subjects must be the per-subject table (a DataFrame indexed by "
                         f"subject_id), got {type(subjects).__name__}")
    if label not in subjects.columns:
        raise InputError(f"label={label!r} is not a column of subjects; available: "
                         f"{', '.join(map(str, subjects.columns))}")
    if label in WINDOW_COLUMNS:
        raise InputError(f"label={label!r} would overwrite the windows' own {label!r} column; "
                         "rename that column of subjects")
    return pd.Series(subjects[label].to_numpy(), index=subjects.index.astype(str))


def _window_table(feature, o, acts, win) -> pd.DataFrame:
    return pd.DataFrame({
        "feature": feature, "rank": np.arange(1, len(o) + 1), "row": o.index.astype(str),
        **{c: o[c].astype(str).to_numpy() for c in ("subject_id", "sample_id", "seq_id", "chrom")},
        "start": win["start"].to_numpy(np.int64), "end": win["end"].to_numpy(np.int64),
        "strand": o["strand"].astype(str).to_numpy(),
        "row_start": pd.to_numeric(o["start"]).to_numpy(np.int64),
        "row_end": pd.to_numeric(o["end"]).to_numpy(np.int64),
        "activation": np.asarray(acts, dtype=np.float64), "sequence": win["sequence"].to_numpy()})


def _background(adapter, obs, fired, top, flank, n, rng) -> pd.DataFrame:
    """Windows of rows where the feature is 0, sharing no sequence with its top windows."""
    quiet = np.setdiff1d(np.arange(len(obs)), fired)
    draw = rng.choice(quiet, size=min(len(quiet), 4 * n), replace=False)
    win = row_windows(adapter, obs.iloc[draw], flank=flank, sequences=False)
    ok = np.flatnonzero(win["reason"].isna().to_numpy())
    s, e = win["start"].to_numpy(np.int64)[ok], win["end"].to_numpy(np.int64)[ok]
    c = obs["chrom"].astype(str).to_numpy()[draw[ok]]
    near = _overlaps(c, s, e, top["chrom"].to_numpy(), top["start"].to_numpy(np.int64),
                     top["end"].to_numpy(np.int64))
    far = np.flatnonzero(~near)
    keep = ok[far[_distinct(c[far], s[far], e[far], n)]]
    win = win.iloc[keep].copy()
    _read_sequences(adapter, win)
    return _window_table(top["feature"].iloc[0], obs.iloc[draw[keep]], np.zeros(len(keep)), win)


def _motif_rows(feature, found, n_fired, n_bg, matches, db, collection, tax_group):
    parts, pwms = [], []
    for i, m in enumerate(found, 1):
        hits = match_jaspar(m.pwm, db=db, collection=collection, tax_group=tax_group, top=matches)
        seed_row = m.evidence[m.evidence["kmer"] == m.seed].iloc[0]
        parts.append(pd.DataFrame({
            "feature": feature, "motif": i, "match_rank": hits["rank"].to_numpy(),
            "consensus": m.consensus, "seed": m.seed, "width": m.width, "n_fired": n_fired,
            "n_sites": m.n_sites, "fired_share": m.n_sites / n_fired, "n_background": n_bg,
            "n_background_sites": m.n_background, "background_share": m.n_background / n_bg,
            # the threshold was chosen to minimise this p: read it as a separation, not a test
            "site_p": float(hypergeom.sf(m.n_sites - 1, n_fired + n_bg, m.n_sites + m.n_background,
                                         n_fired)),
            "discovery_p": float(seed_row["p"]), "discovery_q": float(seed_row["q"]),
            **{c: hits[c].to_numpy() for c in ("matrix_id", "name", "p", "q", "offset",
                                                "orientation", "overlap")},
            "logo": None}))
        pwms.append(pd.DataFrame({"feature": feature, "motif": i,
                                  "position": np.arange(m.width),
                                  **{b: m.pwm[r] for r, b in enumerate("ACGT")}}))
    t = pd.concat(parts, ignore_index=True)
    t.insert(2, "rank", np.arange(1, len(t) + 1))  # motifs in the order found, then matches
    return t[list(MOTIF_COLUMNS)], pd.concat(pwms, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# logos


def _information(pwm: np.ndarray) -> np.ndarray:
    p = np.asarray(pwm, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log2(p), 0.0).sum(0)
    return 2.0 - entropy


def _letter_paths():
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    prop = FontProperties(family="DejaVu Sans", weight="bold")
    return {b: TextPath((0, 0), b, size=1, prop=prop) for b in "ACGT"}


def draw_logo(ax, pwm, *, x0: float = 0.0, title: str | None = None) -> None:
    """Draw a sequence logo of ``pwm`` on ``ax``: each column a stack of letters whose total
    height is its information content (2 − entropy, bits) and each letter's share its
    probability, the likeliest on top.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    pwm : array-like, shape (4, L)
        Probabilities, rows A, C, G, T.
    x0 : float
        x position of the first column (columns are 1 apart, centred on x0, x0 + 1, ...).
    title : str, optional
        Axes title.
    """
    from matplotlib.patches import PathPatch
    from matplotlib.transforms import Affine2D

    p = np.asarray(pwm, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != 4:
        raise InputError(f"pwm must be a 4 × L matrix (rows A, C, G, T), got shape {p.shape}")
    paths = _letter_paths()
    heights = p * _information(p)
    for col in range(p.shape[1]):
        y = 0.0
        for r in np.argsort(heights[:, col], kind="stable"):
            h = heights[r, col]
            if h <= 0:
                continue
            base = "ACGT"[r]
            ext = paths[base].get_extents()
            # glyph box scaled to the column's width (with a gap) and the letter's height
            t = (Affine2D().translate(-ext.x0, -ext.y0)
                 .scale(0.9 / ext.width, h / ext.height).translate(x0 + col - 0.45, y))
            ax.add_patch(PathPatch(t.transform_path(paths[base]), facecolor=_COLOURS[base],
                                   edgecolor="none", label=base))
            y += h
    ax.set_ylim(0, 2)
    ax.set_ylabel("bits")
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title, loc="left", fontsize=10)


def plot_motif_match(pwm, match=None, *, title: str = "discovered motif",
                     match_title: str = "", offset: int = 0, orientation: str = "+"):
    """A figure of a motif's logo, and below it its match's logo aligned as Tomtom aligned
    them (``offset``: the match's column under the motif's first; ``orientation="-"``: the
    match is drawn reverse-complemented). Sized for print (7 in wide).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    pwm = np.asarray(pwm, dtype=np.float64)
    rows = 1 if match is None else 2
    fig = Figure(figsize=(7, 1.9 * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    lo, hi = 1, pwm.shape[1]  # positions numbered from 1, as people read a motif
    if match is not None:
        m = np.asarray(match, dtype=np.float64)
        m = m[::-1, ::-1] if orientation == "-" else m
        lo, hi = min(lo, 1 - offset), max(hi, m.shape[1] - offset)
        draw_logo(axes[1], m, x0=1 - offset, title=match_title)
    draw_logo(axes[0], pwm, x0=1, title=title)
    for ax in axes:
        ax.set_xlim(lo - 0.6, hi + 0.6)
        ax.tick_params(labelsize=8)
    axes[-1].set_xlabel("position in the discovered motif")
    return fig


def _write_logo(out: Path, feature, pwms: pd.DataFrame, best, db, collection, tax_group) -> str:
    ids, _, mats = jaspar_matrices(db, collection, tax_group)
    pwm = pwms.loc[pwms["motif"] == 1, list("ACGT")].to_numpy().T
    side = "reverse complement" if best["orientation"] == "-" else "as given"
    fig = plot_motif_match(
        pwm, mats[ids.index(best["matrix_id"])],
        title=f"{feature}: motif 1, consensus {best['consensus']} "
              f"({best['n_sites']}/{best['n_fired']} top windows)",
        match_title=f"best JASPAR match {best['matrix_id']} {best['name']} "
                    f"(q = {best['q']:.2g}, {side})",
        offset=int(best["offset"]), orientation=best["orientation"])
    out.mkdir(parents=True, exist_ok=True)
    stem = f"motif_logo_{safe_name(str(feature))}"
    fig.savefig(out / f"{stem}.png", dpi=200)
    fig.savefig(out / f"{stem}.svg")
    return f"{stem}.png"
