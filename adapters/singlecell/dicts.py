"""Gene dictionaries (token ids, gene medians, identifier mappings) from user files.

Geneformer ships its dictionaries as Python pickles. Unpickling a file runs whatever code
the file names, so pickles are read here only through :class:`RestrictedUnpickler`, which
builds plain ``dict``/``list``/``tuple``/``str``/``int``/``float``/``bool``/``None`` values
(and numeric numpy scalars, returned as Python numbers) and refuses every other object. JSON (``{"key": value}``) and two-column TSV/CSV files are read as well and are the
recommended format (``python -m bioviz.adapters.singlecell.dicts IN.pkl OUT.json``).
"""

from __future__ import annotations

import json
import pickle
import sys
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from bioviz.errors import InputError

PICKLE_SUFFIXES = (".pkl", ".pickle")
TABLE_SUFFIXES = (".tsv", ".csv", ".txt")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that constructs only built-in containers, scalars and numeric numpy scalars.

    Plain dicts, lists, tuples, strings, numbers, booleans and None are encoded by pickle
    opcodes that need no class lookup, so ``find_class`` is reached only for anything else.
    It hands out exactly two callables: ``numpy.dtype`` and numpy's scalar constructor,
    wrapped so that only boolean/integer/float dtypes are built (gene-median dictionaries
    written from numpy hold ``numpy.float64`` values). Everything else is refused, which
    stops code execution through ``__reduce__``.
    """

    def find_class(self, module, name):
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
            if name == "dtype":
                return _numeric_dtype
            if name == "scalar":
                return _numeric_scalar
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: gene dictionaries may hold only plain "
            "dict/list/str/int/float values (convert the file to JSON)"
        )


def _numeric_dtype(spec, *args):
    import numpy as np

    dt = np.dtype(spec)
    if dt.kind not in "biuf":
        raise pickle.UnpicklingError(f"refusing numpy dtype {dt} (only numeric scalars are allowed)")
    return dt


def _numeric_scalar(dtype, data=None):
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise pickle.UnpicklingError("refusing a non-numeric numpy scalar")
    return np.frombuffer(data, dtype=dtype, count=1)[0].item()


def load_pickle_restricted(path) -> object:
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f).load()
        except pickle.UnpicklingError as e:
            raise InputError(f"{path}: {e}") from None
        except Exception as e:  # truncated or not a pickle at all
            raise InputError(f"{path}: not a readable pickle of a plain dictionary ({e})") from None


def load_mapping(source, *, what: str, value_type=None, key_column=None, value_column=None) -> dict:
    """A ``{key: value}`` dictionary from a dict, a pandas Series/DataFrame, or a file.

    Files: ``.json`` (an object), ``.pkl``/``.pickle`` (restricted unpickler), ``.tsv``/
    ``.csv``/``.txt`` (two columns, or the named ``key_column``/``value_column``).
    ``what`` names the dictionary in errors; ``value_type`` (``int``/``float``/``str``)
    checks and converts every value.
    """
    if isinstance(source, Mapping):
        data, where = dict(source), f"{what} (dict)"
    elif isinstance(source, pd.Series):
        data, where = source.to_dict(), f"{what} (Series)"
    elif isinstance(source, pd.DataFrame):
        data, where = _from_frame(source, key_column, value_column, what), f"{what} (DataFrame)"
    elif isinstance(source, (str, Path)):
        path = Path(source)
        where = f"{what} file {path}"
        if not path.is_file():
            raise FileNotFoundError(f"{where} does not exist")
        suffix = path.suffix.lower()
        if suffix == ".json":
            with open(path) as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise InputError(f"{where} is not valid JSON ({e})") from None
        elif suffix in PICKLE_SUFFIXES:
            data = load_pickle_restricted(path)
        elif suffix in TABLE_SUFFIXES:
            sep = "," if suffix == ".csv" else "\t"
            frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
            data = _from_frame(frame, key_column, value_column, where)
        else:
            raise InputError(f"{where}: unknown format {suffix!r}; use .json, .tsv/.csv or .pkl")
    else:
        raise TypeError(f"{what}: expected a dict, a DataFrame or a file path, got {type(source).__name__}")
    if not isinstance(data, dict):
        raise InputError(f"{where} holds a {type(data).__name__}, expected a dictionary")
    if not data:
        raise InputError(f"{where} is empty")
    if value_type is not None:
        data = {k: _convert(k, v, value_type, where) for k, v in data.items()}
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise InputError(f"{where}: keys must be strings (gene identifiers), found {bad_keys[:3]!r}")
    return data


def _from_frame(frame: pd.DataFrame, key_column, value_column, where) -> dict:
    if key_column is None and value_column is None:
        if frame.shape[1] != 2:
            raise InputError(
                f"{where}: expected two columns (identifier, mapped value), found {frame.shape[1]} "
                f"({list(frame.columns)}); name them with key_column=/value_column="
            )
        key_column, value_column = frame.columns
    for col in (key_column, value_column):
        if col not in frame.columns:
            raise InputError(f"{where}: no column {col!r} (columns: {list(frame.columns)})")
    frame = frame[[key_column, value_column]]
    frame = frame[(frame[key_column] != "") & (frame[value_column] != "")]
    dup = frame[key_column][frame[key_column].duplicated()]
    if len(dup):
        # a many-to-one table is fine; one identifier with two targets is ambiguous
        clash = frame[frame[key_column].isin(dup)].groupby(key_column)[value_column].nunique()
        clash = clash[clash > 1]
        if len(clash):
            raise InputError(
                f"{where}: {len(clash)} identifiers map to more than one value "
                f"(first: {clash.index[:3].tolist()}); keep one row per identifier"
            )
    return dict(zip(frame[key_column].astype(str), frame[value_column]))


def _convert(key, value, value_type, where):
    if isinstance(value, bool) or value is None:
        raise InputError(f"{where}: value for {key!r} is {value!r}, expected {value_type.__name__}")
    try:
        out = value_type(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: value for {key!r} is {value!r}, expected {value_type.__name__}") from None
    if value_type is int and isinstance(value, float) and value != out:
        raise InputError(f"{where}: value for {key!r} is {value!r}, expected an integer token id")
    return out


def convert_to_json(src, dst) -> None:
    """Convert a (restricted) pickle or table dictionary to JSON."""
    data = load_mapping(src, what="dictionary")
    with open(dst, "w") as f:
        json.dump(data, f, indent=0, sort_keys=False)


if __name__ == "__main__":  # python -m bioviz.adapters.singlecell.dicts IN OUT.json
    if len(sys.argv) != 3:
        print("usage: python -m bioviz.adapters.singlecell.dicts IN.(pkl|tsv|csv|json) OUT.json", file=sys.stderr)
        sys.exit(2)
    convert_to_json(sys.argv[1], sys.argv[2])
