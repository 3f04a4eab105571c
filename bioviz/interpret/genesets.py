"""Gene sets: read GMT files, match them to the genes a model saw, and the small immune GMT
bioviz ships (sources and licences in ``data/immune_sources.md``).

Gene symbols are matched exactly by default: upper-casing is right for human symbols but
merges distinct genes in species whose symbols differ only by case, so case-insensitive
matching is an option, never the default.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import pandas as pd

from ..errors import InputError

__all__ = ["GeneSet", "read_gmt", "check_universe", "immune_gmt", "as_gene_sets"]


@dataclass(frozen=True)
class GeneSet:
    """One named gene set: ``genes`` unique, in file order."""

    name: str
    description: str
    genes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.genes)


def _unique(genes: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(genes))


def read_gmt(path) -> dict[str, GeneSet]:
    """Read a GMT file (one set a line: name, description, genes, tab-separated).

    Parameters
    ----------
    path : str or path-like
        The GMT file (UTF-8). Blank lines are skipped; repeated genes within a set are kept once.

    Returns
    -------
    dict of str to GeneSet
        In file order.

    Raises
    ------
    InputError
        The file is missing or unreadable, or a line has fewer than 3 tab-separated fields, an
        empty set name, no genes, or a set name used before (the message names file and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"gene-set file {path} does not exist: pass the path of a .gmt file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"gene-set file {path} cannot be read as UTF-8 text ({err})") from None
    sets: dict[str, GeneSet] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        fields = line.split("\t")
        if len(fields) < 3:
            raise InputError(f"{where}: expected at least 3 tab-separated fields (name, description, "
                             f"genes...), got {len(fields)}; GMT fields are separated by tabs")
        name = fields[0].strip()
        if not name:
            raise InputError(f"{where}: the gene-set name (first field) is empty")
        if name in sets:
            raise InputError(f"{where}: gene set {name!r} is defined twice; set names must be unique")
        genes = _unique(g.strip() for g in fields[2:] if g.strip())
        if not genes:
            raise InputError(f"{where}: gene set {name!r} lists no genes")
        sets[name] = GeneSet(name, fields[1].strip(), genes)
    return sets


def as_gene_sets(sets, name: str = "sets") -> dict[str, GeneSet]:
    """``sets`` as a dict of :class:`GeneSet`: accepts GeneSets or plain lists of symbols.

    Raises
    ------
    InputError
        ``sets`` is not a mapping of set name to GeneSet or list of gene symbols.
    """
    if not isinstance(sets, Mapping):
        raise InputError(f"{name} must be a dict of set name → GeneSet or list of gene symbols "
                         f"(e.g. from read_gmt), got {type(sets).__name__}")
    out = {}
    for key, value in sets.items():
        if isinstance(value, GeneSet):
            out[str(key)] = value
            continue
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise InputError(f"{name}[{key!r}] must be a GeneSet or a list of gene symbols, "
                             f"got {type(value).__name__}")
        out[str(key)] = GeneSet(str(key), "", _unique(str(g) for g in value))
    return out


def _universe(universe, name: str = "universe") -> list[str]:
    if isinstance(universe, str) or not isinstance(universe, Iterable):
        raise InputError(f"{name} must be a list of gene symbols (e.g. adata.var_names), "
                         f"got {type(universe).__name__}")
    genes = [str(g) for g in universe]
    if not genes:
        raise InputError(f"{name} is empty: pass the genes the model saw (e.g. adata.var_names)")
    return genes


def check_universe(sets, universe, *, min_size: int = 5, case_insensitive: bool = False):
    """Restrict gene sets to the genes of a data set, and say what was lost.

    Parameters
    ----------
    sets : dict of str to GeneSet (or to a list of gene symbols)
    universe : iterable of str
        The genes measured (e.g. ``adata.var_names``).
    min_size : int, default 5
        Sets with fewer genes than this left in the universe are dropped.
    case_insensitive : bool, default False
        Match symbols ignoring case; restricted sets then use the universe's spelling. Safe for
        human symbols, not for species whose distinct genes differ only by case.

    Returns
    -------
    kept : dict of str to GeneSet
        The sets that keep at least ``min_size`` genes, holding only genes in the universe.
    report : pandas.DataFrame
        One row per input set: ``set``, ``n_genes``, ``n_in_universe``, ``n_unknown``, ``kept``.

    Warns
    -----
    UserWarning
        With the counts, when some genes are not in the universe or some sets are dropped.
    """
    sets = as_gene_sets(sets)
    genes = _universe(universe)
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise InputError(f"min_size must be a positive integer, got {min_size!r}")
    if case_insensitive:
        lookup: dict[str, str] = {}
        for g in genes:
            if lookup.setdefault(g.upper(), g) != g:
                raise InputError(f"universe holds {lookup[g.upper()]!r} and {g!r}, which differ "
                                 "only by case: match with case_insensitive=False")
        def match(g):
            return lookup.get(g.upper())
    else:
        present = set(genes)
        def match(g):
            return g if g in present else None

    kept, rows = {}, []
    for name, gs in sets.items():
        hits = _unique(m for m in map(match, gs.genes) if m is not None)
        ok = len(hits) >= min_size
        rows.append((name, len(gs), len(hits), len(gs) - len(hits), ok))
        if ok:
            kept[name] = GeneSet(gs.name, gs.description, hits)
    report = pd.DataFrame(rows, columns=["set", "n_genes", "n_in_universe", "n_unknown", "kept"])
    unknown = int(report["n_unknown"].sum())
    dropped = report.loc[~report["kept"], "set"].tolist()
    if unknown or dropped:
        said = [f"{unknown} of {int(report['n_genes'].sum())} genes of {len(sets)} gene sets are "
                f"not among the {len(set(genes))} genes of the universe"]
        if not case_insensitive:
            upper = {g.upper() for g in genes}
            near = {g for gs in sets.values() for g in gs.genes if match(g) is None and g.upper() in upper}
            if near:
                said.append(f"{len(near)} of them match a gene if case is ignored (e.g. "
                            f"{sorted(near)[:3]}): case_insensitive=True if the species allows")
        if dropped:
            said.append(f"{len(dropped)} sets keep fewer than min_size={min_size} genes and are "
                        f"dropped: {dropped}")
        warnings.warn("; ".join(said) + " (see the report of check_universe)", stacklevel=2)
    return kept, report


def immune_gmt() -> Path:
    """Path of the immune gene sets bioviz ships (``bioviz/interpret/data/immune.gmt``).

    Six curated programmes (type I interferon response, NK/CD8 cytotoxicity, B-cell identity
    and BCR signalling, MHC class II antigen presentation, monocyte/myeloid inflammation,
    T-cell identity) of human gene symbols; sources in ``data/immune_sources.md``.
    """
    return Path(str(files("bioviz.interpret").joinpath("data", "immune.gmt")))
