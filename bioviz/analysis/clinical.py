"""Subject-level inputs for the association tests: the subjects' obs (from
:func:`~bioviz.analysis.aggregate.aggregate`) joined with an optional clinical table, and the
labels, covariates and strata taken from it, checked and aligned.

Everything a clinician-facing analyst can get wrong in a clinical table is refused here,
before any test runs, with the column, the subjects and what to do.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from ..errors import InputError
from .result import Outcome

#: a label with at least this many distinct numeric values is continuous
CONTINUOUS_MIN_VALUES = 5
#: a label with at most this many distinct values (and not continuous) is categorical
CATEGORICAL_MAX_LEVELS = 20
#: smallest eigenvalue of the columns' correlation matrix below which they are collinear
#: (two columns: |corr| > 0.999)
COLLINEAR_TOL = 1e-3

#: pairs of level names (case-insensitive) whose case level is known whatever the sort order
#: ("case" sorts before "control")
CASE_NAMES = {"case": "control", "yes": "no", "true": "false", "positive": "negative"}

_LABEL_KEYS = {"column", "kind", "case", "name"}
_SURVIVAL_KEYS = {"name", "time", "event", "kind"}


@dataclass
class Design:
    """Aligned, validated inputs of the tests; row ``i`` of every array is ``subjects[i]``.

    ``rows`` gives each kept subject's position in the ``subjects_obs`` passed to
    :func:`design` (``X[design.rows]`` aligns an aggregate's matrix with the design).
    """

    subjects: pd.Index
    outcomes: list[Outcome]
    covariates: np.ndarray | None
    covariate_names: list[str]
    strata: np.ndarray | None
    strata_name: str | None
    clinical: pd.DataFrame
    notes: dict = field(default_factory=dict)
    rows: np.ndarray | None = None


def design(subjects_obs, labels, *, covariates=(), strata: str | None = None, clinical=None,
           subject_key: str = "subject_id", min_subjects: int = 6) -> Design:
    """Labels, covariates and strata for the subjects, joined, checked and aligned.

    Parameters
    ----------
    subjects_obs : pandas.DataFrame or anndata.AnnData
        One row per subject, index = subject ids (an :func:`aggregate` output's ``obs``, or
        the AnnData itself).
    labels
        A list (or one item) of: a column name, the kind inferred; a dict ``{"column": ...,
        "kind": "binary" | "continuous" | "categorical", "case": level, "name": ...}``; or a
        survival dict ``{"name": ..., "time": column, "event": column}``. Inferred kinds: bool
        or two distinct values → binary; numeric with at least 5 distinct values, or with
        fractional values → continuous; otherwise up to 20 distinct values → categorical
        (numeric grades 1-4 included); more → give the kind.
        The case level of a binary label: ``case`` when given, else True, else 1, else
        "case" against "control" (also yes/no, true/false, positive/negative, any letter
        case), else the second of the sorted levels (recorded in ``notes``).
    covariates
        Column names adjusted for: numeric as is, others (and bool) one-hot with the first
        sorted level dropped, named ``column[level]``. No intercept.
    strata
        A column whose levels bound permutations and bootstraps (and Cox baselines).
    clinical : None, pandas.DataFrame, str or Path
        A clinical table (CSV, TSV or parquet), one row per subject keyed by
        ``subject_key``; its columns replace same-named obs columns.
    subject_key
        The clinical table's subject id column.
    min_subjects
        Fewest subjects left after dropping missing values.

    Returns
    -------
    Design
        ``notes`` records the subjects dropped and why, the subjects found on one side of
        the join only, the columns the clinical table replaced, and every label's kind,
        levels and case level.

    Raises
    ------
    InputError
        An unknown column, duplicate subject rows, no subject in common, too few subjects, a
        label with one class or a level of fewer than 2 subjects, a label whose kind cannot
        be inferred, bad survival times or events, a constant covariate, or collinear
        covariates (with each other or with a label).

    Warns
    -----
    UserWarning
        Subjects on one side of the join only, and subjects dropped for missing values.
    """
    obs = _subjects_frame(subjects_obs)
    notes: dict = {}
    table, obs_cols, clin_cols = _join(obs, clinical, subject_key, notes)
    specs = _label_specs(labels)
    covariates = [covariates] if isinstance(covariates, str) else list(covariates)
    _check_columns(specs, covariates, strata, table, obs_cols, clin_cols)
    table = _drop_missing(table, specs, covariates, strata, min_subjects, notes)
    ids = table.index
    outcomes = [_outcome(spec, table, notes) for spec in specs]
    cov, cov_names = _covariate_matrix(table, covariates)
    _check_collinear(cov, cov_names, covariates, outcomes, specs)
    strata_codes = None
    if strata is not None:
        strata_codes = _strata(table[strata], strata, outcomes, notes)
    notes["n_subjects"] = len(ids)
    notes["covariates"] = list(cov_names)
    return Design(subjects=ids, outcomes=outcomes, covariates=cov, covariate_names=cov_names,
                  strata=strata_codes, strata_name=strata, clinical=table, notes=notes,
                  rows=obs.index.get_indexer(ids))


# -- the join ---------------------------------------------------------------------------------


def _subjects_frame(subjects_obs) -> pd.DataFrame:
    if hasattr(subjects_obs, "obs") and isinstance(subjects_obs.obs, pd.DataFrame):
        subjects_obs = subjects_obs.obs
    if not isinstance(subjects_obs, pd.DataFrame):
        raise InputError("subjects_obs: expected a DataFrame (or AnnData) with one row per "
                         f"subject, index = subject ids; got {type(subjects_obs).__name__}")
    obs = subjects_obs.copy()
    obs.index = pd.Index(obs.index.astype(str), dtype=object)
    if not obs.index.is_unique:
        dup = obs.index[obs.index.duplicated()].unique()
        raise InputError(f"subjects_obs has more than one row for subjects {_ids(dup)}; "
                         "aggregate rows to subjects first (aggregate(..., by='subject_id'))")
    return obs


def _join(obs, clinical, key, notes) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The subjects in both ``obs`` and the clinical table (obs order), clinical columns
    winning; and the column names of each side, for messages."""
    if clinical is None:
        return obs, list(obs.columns), []
    if isinstance(clinical, (str, Path)):
        from ..tables import read_table

        clinical = read_table(clinical, what="clinical table")
    if not isinstance(clinical, pd.DataFrame):
        raise InputError(f"clinical: expected a DataFrame or the path of a CSV/TSV/parquet "
                         f"table, got {type(clinical).__name__}")
    if key not in clinical.columns:
        if clinical.index.name != key:
            raise InputError(f"the clinical table has no subject id column {key!r}; its columns "
                             f"are {', '.join(map(str, clinical.columns))}; pass subject_key= "
                             "naming the column that holds the subject ids")
        clinical = clinical.reset_index()
    cid = clinical[key]
    if cid.isna().any():
        rows = np.flatnonzero(cid.isna().to_numpy())
        raise InputError(f"the clinical table has no {key!r} in {len(rows)} rows (rows "
                         f"{_ids(rows)}, counting from 0); fill or remove them")
    cid = pd.Index(cid.astype(str), dtype=object)
    if not cid.is_unique:
        dup = cid[cid.duplicated()].unique()
        raise InputError(f"the clinical table has more than one row for subjects {_ids(dup)} "
                         f"(column {key!r}); keep one row per subject")
    ct = clinical.drop(columns=[key]).set_axis(cid, axis=0)
    in_table = obs.index.isin(cid)
    only_table = cid[~cid.isin(obs.index)]
    if not in_table.any():
        raise InputError(f"no subject in common: the features' subjects look like "
                         f"{_ids(obs.index)}, the clinical table's {key!r} like {_ids(cid)}; "
                         "check that both use the same ids (leading zeros, prefixes, spaces)")
    only_feat = obs.index[~in_table]
    for what, ids in (("only_in_clinical", only_table), ("only_in_features", only_feat)):
        notes[what] = {"count": len(ids), "ids": list(ids)}
    said = ([f"{len(only_feat)} subjects with features have no clinical row ({_ids(only_feat)}) "
             "and are left out"] if len(only_feat) else []) + (
            [f"{len(only_table)} clinical rows have no features ({_ids(only_table)})"]
            if len(only_table) else [])
    if said:
        warnings.warn(f"clinical join on {key!r}: {in_table.sum()} subjects in common; "
                      + "; ".join(said), stacklevel=3)
    replaced = [c for c in ct.columns if c in obs.columns]
    if replaced:
        notes["clinical_replaces_obs_columns"] = replaced
    common = obs.index[in_table]
    table = pd.concat([obs.loc[common].drop(columns=replaced), ct.loc[common]], axis=1)
    return table, list(obs.columns), list(ct.columns)


def _check_columns(specs, covariates, strata, table, obs_cols, clin_cols) -> None:
    label_cols = [c for s in specs for c in _spec_columns(s)]
    wanted = ([("label", c) for c in label_cols] + [("covariate", c) for c in covariates]
              + ([("strata", strata)] if strata is not None else []))
    missing = [(role, c) for role, c in wanted if c not in table.columns]
    if missing:
        where = f"the subjects' obs has {', '.join(map(str, obs_cols)) or 'no columns'}"
        if clin_cols:
            where += f"; the clinical table has {', '.join(map(str, clin_cols))}"
        listed = ", ".join(f"{role} {c!r}" for role, c in missing)
        raise InputError(f"{listed}: no such column; {where}")
    for c in covariates:
        if c in label_cols:
            raise InputError(f"covariate {c!r} is also a label: a label cannot be adjusted for "
                             "itself; remove it from covariates")
    if len(set(covariates)) < len(covariates):
        raise InputError(f"covariates lists a column twice: {covariates}")
    if strata is not None and strata in label_cols:
        raise InputError(f"strata {strata!r} is also a label: within each stratum the label "
                         "would not vary; choose another strata column")
    if strata is not None and strata in covariates:
        raise InputError(f"{strata!r} is both a covariate and the strata; a stratified test "
                         "already adjusts for it: remove it from covariates")


def _drop_missing(table, specs, covariates, strata, min_subjects, notes) -> pd.DataFrame:
    """Keep subjects with every value needed; warn and record who is dropped for which
    column."""
    cols = list(dict.fromkeys([c for s in specs for c in _spec_columns(s)] + covariates
                              + ([strata] if strata is not None else [])))
    miss = table[cols].isna()
    dropped = {c: list(table.index[miss[c].to_numpy()]) for c in cols if miss[c].any()}
    keep = ~miss.any(axis=1).to_numpy()
    notes["dropped_missing"] = dropped
    said = "; ".join(f"{c!r}: {len(v)} ({_ids(v)})" for c, v in dropped.items())
    if keep.sum() < min_subjects:
        raise InputError(f"only {keep.sum()} of {len(table)} subjects have every value needed "
                         f"(at least min_subjects={min_subjects} are needed)"
                         + (f"; missing values: {said}" if said else "")
                         + "; fill the missing values or drop a label or covariate")
    if dropped:
        warnings.warn(f"{(~keep).sum()} subjects are left out for missing values: {said}",
                      stacklevel=3)
    return table.loc[keep]


# -- labels -----------------------------------------------------------------------------------


def _label_specs(labels) -> list[dict]:
    if isinstance(labels, (str, dict)):
        labels = [labels]
    specs = []
    for item in labels:
        if isinstance(item, str):
            specs.append({"column": item, "kind": None, "case": None, "name": item})
        elif isinstance(item, dict) and "time" in item:
            _check_keys(item, _SURVIVAL_KEYS, "a survival label")
            if "event" not in item or item.get("kind", "survival") != "survival":
                raise InputError(f"survival label {item}: expected {{'name': ..., 'time': "
                                 "column, 'event': column}")
            specs.append({"kind": "survival", "time": item["time"], "event": item["event"],
                          "name": item.get("name", item["time"])})
        elif isinstance(item, dict) and "column" in item:
            _check_keys(item, _LABEL_KEYS, "a label")
            kind = item.get("kind")
            if kind not in (None, "binary", "continuous", "categorical"):
                raise InputError(f"label {item['column']!r}: kind={kind!r}; expected 'binary', "
                                 "'continuous' or 'categorical' (survival: {'time': ..., "
                                 "'event': ...})")
            if item.get("case") is not None and kind not in (None, "binary"):
                raise InputError(f"label {item['column']!r}: case= applies to binary labels, "
                                 f"not {kind}")
            specs.append({"column": item["column"], "kind": kind, "case": item.get("case"),
                          "name": item.get("name", item["column"])})
        else:
            raise InputError(f"labels: {item!r} is not a column name, a {{'column': ...}} dict "
                             "or a survival {'name': ..., 'time': ..., 'event': ...} dict")
    if not specs:
        raise InputError("labels is empty; name at least one clinical column to test")
    names = [s["name"] for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"labels: the name(s) {dup} are used twice; give each label its own "
                         "'name'")
    return specs


def _check_keys(item: dict, allowed: set, what: str) -> None:
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise InputError(f"{what} {item}: unknown key(s) {unknown}; expected {sorted(allowed)}")


def _spec_columns(spec: dict) -> list[str]:
    return [spec["time"], spec["event"]] if spec["kind"] == "survival" else [spec["column"]]


def _outcome(spec: dict, table: pd.DataFrame, notes: dict) -> Outcome:
    name, ids = spec["name"], table.index
    record = notes.setdefault("labels", {})
    if spec["kind"] == "survival":
        t, e = check_survival(table[spec["time"]], table[spec["event"]],
                              time_name=spec["time"], event_name=spec["event"], subjects=ids)
        record[name] = {"kind": "survival", "time": spec["time"], "event": spec["event"],
                        "n_events": int(e.sum()), "n": len(t)}
        return Outcome(name, "survival", t, event=e)
    col = spec["column"]
    s = table[col]
    levels = _levels(s)
    if len(levels) < 2:
        raise InputError(f"label {col!r} has one value ({levels[0]}) among the {len(s)} "
                         "subjects kept: there is nothing to compare")
    kind, inferred = spec["kind"], spec["kind"] is None
    if inferred:
        kind = _infer_kind(s, levels, col)
    if kind == "categorical" and len(levels) == 2:
        kind = "binary"  # two levels: compared as case vs control
    entry = {"kind": kind, "column": col, "kind_inferred": inferred}
    record[name] = entry
    if kind == "continuous":
        y = _numeric(s, col, "label", ids)
        entry["n"] = len(y)
        return Outcome(name, "continuous", y)
    counts = {str(lv): int((s == lv).sum()) for lv in levels}
    entry["levels"], entry["counts"] = [str(lv) for lv in levels], counts
    small = {lv: n for lv, n in counts.items() if n < 2}
    if small:
        raise InputError(f"label {col!r}: level(s) {sorted(small)} have fewer than 2 subjects "
                         f"(counts per level: {counts}); merge rare levels or drop the label")
    if kind == "binary":
        if len(levels) != 2:
            raise InputError(f"label {col!r} is binary but has {len(levels)} levels {counts}; "
                             "make a two-level column, or use kind='categorical'")
        case, rule = _case_level(s, levels, spec["case"], col)
        control = levels[1 - levels.index(case)]
        entry.update(case=str(case), control=str(control), case_rule=rule)
        return Outcome(name, "binary", (s == case).to_numpy(bool), [str(control), str(case)])
    codes = pd.Categorical(s, categories=levels).codes.astype(np.int64)
    return Outcome(name, "categorical", codes, [str(lv) for lv in levels])


def reference_level(values, label: str, *, case=None,
                    reference=None) -> tuple[str, list, object | None]:
    """``(kind, levels, reference)`` of a label's values, by the rules :func:`design` uses:
    ``reference`` when given (one of the levels), else a binary label's non-case level
    (``case`` given, True/1, or named: control, no, negative...) and a categorical label's
    first sorted level; a continuous label has none. What maps and baselines compare against
    (the lesion-free scans)."""
    s = pd.Series(values).dropna()
    levels = _levels(s)
    if len(levels) < 2:
        raise InputError(f"label {label!r} has {len(levels)} distinct value(s): no reference level")
    kind = _infer_kind(s, levels, label)
    if reference is not None:
        for lv in levels:
            if lv == reference or str(lv) == str(reference):
                return kind, levels, lv
        raise InputError(f"label {label!r}: reference={reference!r} is not one of its levels "
                         f"{[str(v) for v in levels]}")
    if kind == "continuous":
        return kind, levels, None
    if kind == "binary":
        case_level, _ = _case_level(s, levels, case, label)
        return kind, levels, levels[1 - levels.index(case_level)]
    return kind, levels, levels[0]


def _levels(s: pd.Series) -> list:
    """Distinct values, sorted (by text when they do not compare)."""
    values = list(pd.unique(s.dropna()))
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _infer_kind(s: pd.Series, levels: list, col: str) -> str:
    if is_bool_dtype(s) or len(levels) == 2:
        return "binary"
    if is_numeric_dtype(s) and (len(levels) >= CONTINUOUS_MIN_VALUES
                                or not np.all(np.mod(np.asarray(levels, float), 1) == 0)):
        return "continuous"  # many values, or fractional ones: a measurement, not a grade
    if len(levels) <= CATEGORICAL_MAX_LEVELS:
        return "categorical"
    raise InputError(f"label {col!r} has {len(levels)} distinct non-numeric values (e.g. "
                     f"{_ids(levels)}): its kind cannot be inferred; pass {{'column': {col!r}, "
                     "'kind': 'continuous' | 'categorical'}} (or recode it)")


def _case_level(s, levels, case, col):
    """The case level of a binary label and the rule that chose it."""
    if case is not None:
        for lv in levels:
            if lv == case or str(lv) == str(case):
                return lv, "given"
        raise InputError(f"label {col!r}: case={case!r} is not one of its levels "
                         f"{[str(lv) for lv in levels]}")
    if is_bool_dtype(s) or set(levels) == {False, True} and all(
            isinstance(v, (bool, np.bool_)) for v in levels):
        return True, "True"
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in levels) and \
            set(levels) == {0, 1}:
        return levels[1], "1"
    lower = [str(v).strip().lower() for v in levels]
    for case_name, control_name in CASE_NAMES.items():
        if sorted(lower) == sorted([case_name, control_name]):
            return levels[lower.index(case_name)], f"named {case_name!r}"
    return levels[1], "second of the sorted levels"


def _numeric(s: pd.Series, col: str, role: str, ids) -> np.ndarray:
    """``s`` as finite float64, or an error naming the subjects whose value is not."""
    if is_bool_dtype(s):
        return s.to_numpy(np.float64)
    x = pd.to_numeric(s, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        shown = [f"{i} ({_val(v)})" for i, v in zip(ids[bad], s[bad])]
        raise InputError(f"{role} {col!r} is not a finite number for {bad.sum()} subjects: "
                         f"{_ids(shown)}; fix those values or make the column numeric")
    return x


# -- survival ---------------------------------------------------------------------------------


def check_survival(time, event, *, time_name: str, event_name: str,
                   subjects) -> tuple[np.ndarray, np.ndarray]:
    """Validated follow-up times and event indicators.

    Parameters
    ----------
    time, event : array-like
        One value per subject: follow-up time (numeric, > 0) and event indicator (bool, or
        0/1 where 1 = event observed, 0 = censored).
    time_name, event_name : str
        The columns they came from, for messages.
    subjects : sequence
        The subject ids, aligned with ``time`` and ``event``, for messages.

    Returns
    -------
    time : numpy.ndarray
        float64.
    event : numpy.ndarray
        bool, True = event observed.

    Raises
    ------
    InputError
        Times that are not numbers (or missing, or infinite), negative or zero; events that
        are not 0/1 or bool; no event at all. The message names the column and up to 5
        subjects with their values.
    """
    t = pd.Series(np.asarray(time, dtype=object) if not hasattr(time, "dtype") else time)
    e = pd.Series(np.asarray(event, dtype=object) if not hasattr(event, "dtype") else event)
    t, e = t.reset_index(drop=True), e.reset_index(drop=True)
    ids = pd.Index([str(i) for i in subjects], dtype=object)
    if not len(t) == len(e) == len(ids):
        raise InputError(f"survival: {time_name!r} has {len(t)} values, {event_name!r} "
                         f"{len(e)}, subjects {len(ids)}; they must be aligned")
    x = (np.full(len(t), np.nan) if is_bool_dtype(t)
         else pd.to_numeric(t, errors="coerce").to_numpy(np.float64))
    problems = []
    for what, bad in (("is missing or not a number", ~np.isfinite(x) & ~np.isinf(x)),
                      ("is infinite", np.isinf(x)),
                      ("is negative", x < 0),
                      ("is zero (follow-up must be > 0: remove those subjects or set their "
                       "actual follow-up)", x == 0)):
        if bad.any():
            shown = [f"{i} ({_val(v)})" for i, v in zip(ids[bad], t[bad])]
            problems.append(f"{what} for {bad.sum()} subjects: {_ids(shown)}")
    if problems:
        raise InputError(f"survival time {time_name!r} " + "; ".join(problems)
                         + "; times must be positive numbers (e.g. months from diagnosis)")
    ev = _events(e, event_name, ids)
    if not ev.any():
        raise InputError(f"survival event {event_name!r} has no events among the {len(ev)} "
                         "subjects (all 0 / censored): a survival test needs at least one; "
                         "check the coding (1 = event observed, 0 = censored)")
    return x, ev


def _events(e: pd.Series, name: str, ids: pd.Index) -> np.ndarray:
    if is_bool_dtype(e):
        return e.to_numpy(bool)
    if e.map(lambda v: isinstance(v, (bool, np.bool_))).all():
        return e.astype(bool).to_numpy()
    num = pd.to_numeric(e, errors="coerce").to_numpy(np.float64)
    bad = ~np.isin(num, (0.0, 1.0))
    if bad.any():
        shown = [f"{i} ({_val(v)})" for i, v in zip(ids[bad], e[bad])]
        raise InputError(f"survival event {name!r} is not 0/1 for {bad.sum()} subjects: "
                         f"{_ids(shown)}; code it 1 = event observed, 0 = censored (or "
                         "True/False)")
    return num == 1


# -- covariates and strata --------------------------------------------------------------------


def _covariate_matrix(table, covariates) -> tuple[np.ndarray | None, list[str]]:
    """Numeric covariates as they are, the others one-hot without their first level."""
    if not covariates:
        return None, []
    cols, names = [], []
    for c in covariates:
        s = table[c]
        levels = _levels(s)
        if len(levels) < 2:
            raise InputError(f"covariate {c!r} is constant ({levels[0]}) among the {len(s)} "
                             "subjects kept: it cannot be adjusted for; remove it")
        if is_numeric_dtype(s) and not is_bool_dtype(s):
            cols.append(_numeric(s, c, "covariate", table.index))
            names.append(c)
        else:
            for lv in levels[1:]:
                cols.append((s == lv).to_numpy(np.float64))
                names.append(f"{c}[{lv}]")
    return np.column_stack(cols), names


def _check_collinear(cov, cov_names, covariates, outcomes, specs) -> None:
    """Covariates collinear among themselves (with the intercept), or with a label."""
    n = len(outcomes[0].y)
    if cov is None:
        return
    if n < cov.shape[1] + 3:  # intercept, covariates, label, and one residual degree
        raise InputError(f"{cov.shape[1]} covariate columns ({', '.join(cov_names)}) with an "
                         f"intercept and a label need at least {cov.shape[1] + 3} subjects, "
                         f"there are {n}; use fewer covariates (or merge levels)")
    sets = _collinear_sets(cov)
    if sets:
        cols = [cov_names[i] for i in sorted(set().union(*sets))]
        raise InputError(f"covariates {', '.join(cols)} are collinear (one is a linear "
                         "combination of the others and the intercept, or |corr| > 0.999): "
                         "drop one of them, or merge their levels")
    for out, spec in zip(outcomes, specs):
        lab = _label_columns(out)
        sets = _collinear_sets(np.column_stack([cov, lab]))
        involved = sorted({i for s in sets for i in s if i < cov.shape[1]})
        if sets:
            what = (spec["column"] if spec["kind"] != "survival"
                    else f"{spec['time']}/{spec['event']}")
            raise InputError(f"covariate(s) {', '.join(cov_names[i] for i in involved)} and "
                             f"label {out.name!r} (column {what!r}) are collinear (|corr| > "
                             "0.999, or a linear combination): adjusting for them would absorb "
                             "the effect tested; remove them from covariates")


def _label_columns(out: Outcome) -> np.ndarray:
    if out.kind == "categorical":
        return np.column_stack([out.y == k for k in range(1, len(out.levels))]).astype(float)
    if out.kind == "survival":
        return np.column_stack([out.y, out.event.astype(float)])
    return out.y.astype(np.float64)[:, None]


def _collinear_sets(M: np.ndarray) -> list[set[int]]:
    """Sets of columns of ``M`` that are (nearly) linearly dependent once centred (the
    intercept): eigenvectors of their correlation matrix with a tiny eigenvalue."""
    Z = M - M.mean(0)
    norm = np.linalg.norm(Z, axis=0)
    flat = norm == 0
    Z = Z / np.where(flat, 1, norm)
    w, V = np.linalg.eigh(Z.T @ Z)
    sets = [set(np.flatnonzero(np.abs(V[:, k]) > 0.1)) for k in np.flatnonzero(w < COLLINEAR_TOL)]
    return [s for s in sets if s] + [{int(i)} for i in np.flatnonzero(flat)]


def _strata(s: pd.Series, name: str, outcomes: list[Outcome], notes: dict) -> np.ndarray:
    levels = _levels(s)
    codes = pd.Categorical(s, categories=levels).codes.astype(np.int64)
    notes["strata"] = {"column": name,
                       "counts": {str(lv): int((codes == k).sum()) for k, lv in enumerate(levels)}}
    for out in outcomes:
        if out.kind in ("binary", "categorical"):
            varies = any(len(np.unique(out.y[codes == k])) > 1 for k in range(len(levels)))
            if not varies:
                raise InputError(f"label {out.name!r} does not vary within any stratum of "
                                 f"{name!r}: permutations within strata cannot test it; "
                                 "choose other strata (or none)")
    return codes


def _val(v) -> str:
    """A cell's value for a message: text quoted, numbers plain."""
    return repr(v) if isinstance(v, str) else str(v)


def _ids(items, k: int = 5) -> str:
    """Up to ``k`` ids, then how many more."""
    items = list(items)
    shown = ", ".join(map(str, items[:k]))
    return shown + (f" and {len(items) - k} more" if len(items) > k else "")
