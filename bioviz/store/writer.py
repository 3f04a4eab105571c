"""Writing an ActivationStore: chunked, each chunk committed atomically, resumable.

A chunk commit is: grow the arrays (zarr rewrites its metadata atomically), write the
chunk of every layer, write the chunk's obs part (temp file + rename), then record the
commit in ``_progress.json`` (temp file + rename). Anything written after the last record
is ignored and overwritten on resume, so a process killed at any moment resumes from the
last committed chunk and ends with the same bytes as an uninterrupted run.

Each commit also records a checksum of every layer's chunk (in the chunk's obs part, then
in ``checksums.json``), so ``bioviz info --verify`` can tell a chunk altered on disk. The
arrays' fill value is NaN, so a chunk file that goes missing never reads as data.

One writer at a time: :meth:`StoreWriter.open` takes the store's lock
(:class:`bioviz.lock.ArtifactLock`) and :meth:`StoreWriter.finish` or
:meth:`StoreWriter.close` releases it. ``overwrite=True`` deletes only a store bioviz wrote
(its format marker) holding only files bioviz writes.

Rows arrive in batches whose sizes need not divide the chunk size. The record says where
to resume in the *input*: the batch holding the first uncommitted row, and how many of that
batch's rows are already committed. Batches are fixed slices of the dataset, so rerunning
that batch gives the same rows.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from ..lock import LOCK_NAME, ArtifactLock
from . import format as fmt
from .format import StoreError


@dataclass
class ResumePoint:
    batch: int = 0  # first batch with uncommitted rows
    skip_rows: int = 0  # rows of that batch already committed
    state: dict | None = None  # caller's running state as it was before that batch
    batch_checksum: str | None = None  # data checksum of that batch, to detect changed input


@dataclass
class _Pending:
    """A batch in the buffer: its index, its first row (global) and the state before it."""

    batch: int
    start: int
    n: int
    state: dict
    state_after: dict
    checksum: str


class StoreWriter:
    """Writes rows to ``path``; use :meth:`open` then :meth:`add` per batch, then :meth:`finish`."""

    def __init__(self, path, fingerprint: dict, *, chunk_rows: int = 4096, dtype: str = "float32",
                 overwrite: bool = False, compression: str | None = None):
        if dtype not in fmt.DTYPES:
            raise StoreError(f"dtype={dtype!r}: the store holds {' or '.join(fmt.DTYPES)}")
        if int(chunk_rows) < 1:
            raise StoreError(f"chunk_rows={chunk_rows!r}: expected a positive integer")
        if compression not in (None, "zstd", "blosc"):
            raise StoreError(f"compression={compression!r}: expected None, 'zstd' or 'blosc'")
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.chunk_rows = int(chunk_rows)
        self.dtype = dtype
        self.overwrite = overwrite
        self.compression = compression
        self.committed_rows = 0
        self.n_chunks = 0
        self._buf_rows: dict[str, list[np.ndarray]] = {}
        self._buf_obs: list[pd.DataFrame] = []
        self._buffered = 0
        self._pending: list[_Pending] = []
        self._arrays: dict[str, zarr.Array] = {}
        self._schema: pa.Schema | None = None
        self._jobs: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._lock: ArtifactLock | None = None

    # -- opening and resuming -----------------------------------------------------------

    def open(self) -> ResumePoint | None:
        """Prepare the directory and take the store's writer lock, held until :meth:`finish`
        or :meth:`close` (a second writer is refused, naming this one). Returns where to
        resume, or ``None`` if the store is already complete with this fingerprint (nothing
        to do; the lock is released)."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise StoreError(f"store path {p} is a file, not a directory")
        _refuse_foreign(p)  # before anything is written into the folder
        p.mkdir(parents=True, exist_ok=True)
        self._lock = ArtifactLock(p, "activation store").acquire()
        try:
            resume = self._open()
        except BaseException:
            self._release()
            raise
        if resume is None:
            self._release()
        return resume

    def _open(self) -> ResumePoint | None:
        p = self.path
        manifest, progress = p / fmt.MANIFEST, p / fmt.PROGRESS
        if _entries(p):
            old = fmt.read_json(manifest if manifest.exists() else progress).get("fingerprint", {})
            diff = _diff(old, self.fingerprint)
            if not manifest.exists():
                # a partial extraction resumes even when data it has not reached yet changed
                # (a scan fixed after a run stopped on it); the caller checks the batch at the
                # resume point against what was committed from it
                diff = [d for d in diff if not _is_data(d)]
            elif "data" in diff and "data" not in old:
                diff[diff.index("data")] = "data (not recorded: made by an older bioviz)"
            if self.overwrite:
                _clear(p)
            elif diff:
                kind = "finished store" if manifest.exists() else "partial extraction"
                data, config = any(map(_is_data, diff)), not all(map(_is_data, diff))
                made = " and ".join(["from different input data"] * data + ["with a different configuration"] * config)
                raise StoreError(
                    f"store path {p} holds a {kind} made {made} "
                    f"(differs in: {', '.join(diff)}); pass overwrite=True to replace it "
                    "or choose another path"
                )
            elif manifest.exists():
                # a run killed between the manifest and the clean-up: finish the clean-up
                shutil.rmtree(p / fmt.OBS_PARTS, ignore_errors=True)
                progress.unlink(missing_ok=True)
                return None
            else:
                return self._resume()
        p.mkdir(parents=True, exist_ok=True)
        zarr.open_group(p / fmt.ARRAYS, mode="w")
        (p / fmt.OBS_PARTS).mkdir(exist_ok=True)
        self._record(ResumePoint(), 0, 0)
        return ResumePoint()

    def _resume(self) -> ResumePoint:
        rec = fmt.read_json(self.path / fmt.PROGRESS)
        self.committed_rows, self.n_chunks = rec["committed_rows"], rec["n_chunks"]
        if not rec["layers"]:  # nothing committed yet: start clean
            zarr.open_group(self.path / fmt.ARRAYS, mode="w")
        group = zarr.open_group(self.path / fmt.ARRAYS, mode="r+")
        for name in rec["layers"]:
            arr = _writable(group[name])
            # drop anything a killed run wrote past the last commit
            arr.resize((self.committed_rows, arr.shape[1]))
            self._arrays[name] = arr
        # zarr writes a chunk or metadata to a temporary ``*.partial`` file and renames it; a
        # kill between the two leaves that file (``c/<i>/0.<uuid>.partial``,
        # ``zarr.<uuid>.partial``): it belongs to no commit
        for f in (self.path / fmt.ARRAYS).rglob("*.partial"):
            if f.is_file():
                f.unlink()
        parts = self.path / fmt.OBS_PARTS
        for f in parts.iterdir():
            if not f.name.startswith("part-") or int(f.name[5:11]) >= self.n_chunks or f.suffix != ".parquet":
                f.unlink()
        if self.n_chunks:
            self._schema = _without_checksums(pq.read_schema(fmt.obs_part(self.path, 0)))
        r = rec["resume"]
        return ResumePoint(r["batch"], r["skip_rows"], r["state"], r["batch_checksum"])

    def _record(self, resume: ResumePoint, committed_rows: int, n_chunks: int) -> None:
        fmt.write_json_atomic(self.path / fmt.PROGRESS, {
            "format": fmt.FORMAT,  # what lets overwrite=True know this folder is bioviz's
            "fingerprint": self.fingerprint,
            "committed_rows": committed_rows,
            "n_chunks": n_chunks,
            "chunk_rows": self.chunk_rows,
            "layers": list(self._arrays),
            "resume": {"batch": resume.batch, "skip_rows": resume.skip_rows,
                       "state": resume.state, "batch_checksum": resume.batch_checksum},
        })

    # -- adding rows ----------------------------------------------------------------------

    def add(self, batch: int, rows: dict[str, np.ndarray], obs: pd.DataFrame, state: dict,
            state_after: dict, checksum: str, skip_rows: int = 0) -> None:
        """Buffer one batch's rows (all layers aligned with ``obs``); commit full chunks.

        ``state``/``state_after`` are the caller's running state (JSON-safe) before and after
        this batch, handed back on resume; ``skip_rows`` drops rows already committed by an
        interrupted run.
        """
        self._raise_if_failed()
        n = len(obs)
        if skip_rows:
            rows = {k: v[skip_rows:] for k, v in rows.items()}
            obs = obs.iloc[skip_rows:]
            n -= skip_rows
        if not self._buf_rows:
            self._create_arrays(rows)
        if set(rows) != set(self._buf_rows):
            raise StoreError(f"batch {batch}: layers {sorted(rows)} differ from the store's {sorted(self._buf_rows)}")
        start = self.committed_rows + self._buffered
        self._pending.append(_Pending(batch, start - skip_rows, n + skip_rows, state, state_after, checksum))
        for k, v in rows.items():
            self._buf_rows[k].append(v)
        self._buf_obs.append(obs)
        self._buffered += n
        while self._buffered >= self.chunk_rows:
            self._cut(self.chunk_rows)

    def _create_arrays(self, rows: dict[str, np.ndarray]) -> None:
        group = zarr.open_group(self.path / fmt.ARRAYS, mode="r+")
        compressors = {None: None, "zstd": zarr.codecs.ZstdCodec(level=1),
                       "blosc": zarr.codecs.BloscCodec(cname="lz4", clevel=3)}[self.compression]
        for name, v in rows.items():
            if name not in self._arrays:
                self._arrays[name] = group.create_array(
                    name, shape=(0, v.shape[1]), chunks=(self.chunk_rows, v.shape[1]),
                    # NaN: a chunk file that goes missing reads as NaN, never as rows of zeros
                    dtype=self.dtype, fill_value=float("nan"), compressors=compressors,
                    config={"write_empty_chunks": True},  # every chunk is a file
                )
            elif self._arrays[name].shape[1] != v.shape[1]:
                raise StoreError(
                    f"layer {name!r}: rows have {v.shape[1]} columns but the partial store at "
                    f"{self.path} has {self._arrays[name].shape[1]}; pass overwrite=True"
                )
        for name in rows:
            self._buf_rows[name] = []

    def _cut(self, n: int) -> None:
        """Take the first ``n`` buffered rows as the next chunk and queue its commit."""
        chunk = {}
        for k, parts in self._buf_rows.items():
            allrows = np.concatenate(parts) if len(parts) > 1 else parts[0]
            chunk[k] = allrows[:n]
            self._buf_rows[k] = [allrows[n:]] if len(allrows) > n else []
        obs = pd.concat(self._buf_obs, ignore_index=True) if len(self._buf_obs) > 1 else self._buf_obs[0]
        chunk_obs = obs.iloc[:n].reset_index(drop=True)
        self._buf_obs = [obs.iloc[n:]] if len(obs) > n else []
        self._buffered -= n
        end = self.committed_rows + n
        # resume point: the batch that holds row `end` (the first row not in this chunk)
        while self._pending and self._pending[0].start + self._pending[0].n <= end:
            done = self._pending.pop(0)
        if self._pending:
            p = self._pending[0]
            resume = ResumePoint(p.batch, end - p.start, p.state, p.checksum)
        else:  # the chunk ends exactly at a batch boundary
            resume = ResumePoint(done.batch + 1, 0, done.state_after, None)
        self._submit(self.n_chunks, self.committed_rows, chunk, chunk_obs, resume)
        self.committed_rows = end
        self.n_chunks += 1

    # -- the commit thread ----------------------------------------------------------------

    def _submit(self, chunk_idx, start, rows, obs, resume) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, daemon=True)
            self._thread.start()
        self._jobs.put((chunk_idx, start, rows, obs, resume))
        self._raise_if_failed()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if self._error is None:
                try:
                    self._commit(*job)
                except BaseException as e:  # handed to the main thread
                    self._error = e

    def _commit(self, chunk_idx, start, rows, obs, resume) -> None:
        stop = start + len(obs)
        try:
            sums = {}
            for name, arr in self._arrays.items():
                block = rows[name].astype(self.dtype, copy=False)
                arr.resize((stop, arr.shape[1]))
                arr[start:stop] = block
                sums[name] = fmt.rows_checksum(block)
            table = pa.Table.from_pandas(obs, preserve_index=False)
            if self._schema is None:
                self._schema = table.schema
            else:
                table = _conform(table, self._schema, chunk_idx)
            # the chunk's checksums travel with its obs part: committed together
            table = table.replace_schema_metadata(
                {**(table.schema.metadata or {}), fmt.PART_CHECKSUMS: json.dumps(sums).encode()})
            part = fmt.obs_part(self.path, chunk_idx)
            tmp = part.with_name(part.name + ".tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, part)
            self._record(resume, stop, chunk_idx + 1)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise StoreError(
                    f"disk full while writing chunk {chunk_idx} of {self.path}; the {chunk_idx} "
                    "chunks committed before it are kept: free space and rerun the same command to resume"
                ) from e
            raise

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            self._stop_thread()
            raise err

    def _stop_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self._thread = None

    def close(self) -> None:
        """Wait for queued commits (used on error paths: what was committed stays), then
        release the store's lock."""
        try:
            self._stop_thread()
        finally:
            self._release()

    def _release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    # -- finishing ------------------------------------------------------------------------

    def finish(self, manifest: dict) -> dict:
        """Commit the last partial chunk, merge obs, write the manifest last."""
        if self._buffered:
            self._cut(self._buffered)
        self._stop_thread()
        self._raise_if_failed()
        if self.committed_rows == 0:
            raise StoreError(f"no activation rows were produced for {self.path}; is the dataset empty?")
        parts = [fmt.obs_part(self.path, i) for i in range(self.n_chunks)]
        tmp = self.path / (fmt.OBS + ".tmp")
        sums: dict[str, list[str | None]] = {name: [] for name in self._arrays}
        with pq.ParquetWriter(tmp, self._schema) as w:
            for part in parts:  # streamed: one part in memory at a time
                table = pq.read_table(part)
                recorded = json.loads((table.schema.metadata or {}).get(fmt.PART_CHECKSUMS, b"{}"))
                for name in sums:  # None: committed by a bioviz that recorded no checksums
                    sums[name].append(recorded.get(name))
                w.write_table(table)
        os.replace(tmp, self.path / fmt.OBS)
        fmt.write_json_atomic(self.path / fmt.CHECKSUMS, {
            "algorithm": fmt.CHECKSUM_ALGORITHM, "chunk_rows": self.chunk_rows, "layers": sums})
        manifest = {
            **manifest,
            "format": fmt.FORMAT,
            "schema_version": fmt.SCHEMA_VERSION,
            "fingerprint": self.fingerprint,
            "layers": {k: {"d": int(a.shape[1]), "array": f"{fmt.ARRAYS}/{k}"} for k, a in self._arrays.items()},
            "dtype": self.dtype,
            "n_rows": int(self.committed_rows),
            "chunk_rows": self.chunk_rows,
            "n_chunks": int(self.n_chunks),
            "obs_columns": {f.name: str(f.type) for f in self._schema},
            "checksums": fmt.CHECKSUMS,  # per-chunk checksums, checked by `bioviz info --verify`
        }
        fmt.write_json_atomic(self.path / fmt.MANIFEST, manifest)
        shutil.rmtree(self.path / fmt.OBS_PARTS, ignore_errors=True)
        (self.path / fmt.PROGRESS).unlink(missing_ok=True)
        self._release()
        return manifest


def _writable(arr: zarr.Array) -> zarr.Array:
    """The array, writing every chunk even one that equals the fill value."""
    try:
        return arr.with_config({"write_empty_chunks": True})
    except AttributeError:  # an older zarr 3: its default
        return arr


def _without_checksums(schema: pa.Schema) -> pa.Schema:
    meta = {k: v for k, v in (schema.metadata or {}).items() if k != fmt.PART_CHECKSUMS}
    return schema.with_metadata(meta)


def _entries(p: Path) -> list[Path]:
    """What a store folder holds, its writer's lock aside."""
    return [e for e in p.iterdir() if e.name != LOCK_NAME] if p.is_dir() else []


def _own_progress(rec) -> bool:
    """A ``_progress.json`` bioviz wrote: its format marker (or, before there was one, the
    record's own fields)."""
    legacy = {"fingerprint", "committed_rows", "n_chunks", "chunk_rows", "layers", "resume"}
    return isinstance(rec, dict) and (rec.get("format") == fmt.FORMAT or legacy <= set(rec))


def _refuse_foreign(p: Path) -> None:
    """Refuse a folder that is not empty and not an activation store bioviz wrote: it is
    never written into, and ``overwrite=True`` does not change that."""
    if not _entries(p):
        return
    manifest, progress = p / fmt.MANIFEST, p / fmt.PROGRESS
    marker = manifest if manifest.exists() else progress if progress.exists() else None
    if marker is None:
        why = f"no {fmt.MANIFEST} or {fmt.PROGRESS}"
    else:
        try:
            rec = json.loads(marker.read_text())
        except (OSError, ValueError):
            rec = None
        if marker == manifest and isinstance(rec, dict) and rec.get("format") == fmt.FORMAT:
            return
        if marker == progress and _own_progress(rec):
            return
        found = f"format {rec.get('format')!r}" if isinstance(rec, dict) else "not readable JSON"
        why = f"its {marker.name} is not an activation store's ({found}; expected format {fmt.FORMAT!r})"
    raise StoreError(
        f"store path {p} holds something else, not an activation store ({why}); bioviz never "
        "writes into or deletes a folder it did not make: choose an empty or new directory"
    )


#: what a store folder may hold: ``overwrite=True`` deletes these and nothing else
_OWN = (fmt.ARRAYS, fmt.OBS_PARTS, fmt.OBS, fmt.CHECKSUMS, fmt.PROGRESS, fmt.MANIFEST)  # marker last


def _clear(p: Path) -> None:
    """Delete a store bioviz wrote (``overwrite=True``): only its own files, the format
    marker last, and nothing at all when the folder also holds files bioviz does not write."""
    own = set(_OWN) | {name + ".tmp" for name in _OWN}
    unknown = sorted(e.name for e in _entries(p) if e.name not in own)
    if unknown:
        raise StoreError(
            f"overwrite=True: store path {p} also holds {', '.join(unknown)}, which bioviz did not "
            "write; bioviz deletes only its own files, so nothing was deleted: move them out of the "
            "store or choose another path"
        )
    for name in [n + ".tmp" for n in _OWN] + list(_OWN):
        e = p / name
        if e.is_dir() and not e.is_symlink():
            shutil.rmtree(e)
        elif e.exists() or e.is_symlink():
            e.unlink()


def _conform(table: pa.Table, schema: pa.Schema, chunk_idx: int) -> pa.Table:
    if table.schema.names != schema.names:
        raise StoreError(
            f"chunk {chunk_idx}: obs columns {table.schema.names} differ from the first chunk's {schema.names}"
        )
    if table.schema.equals(schema):
        return table
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise StoreError(f"chunk {chunk_idx}: obs columns do not match the first chunk's types: {e}") from None


def _is_data(field: str) -> bool:
    """Whether a fingerprint difference is in the data (``data``, ``data.obs``)."""
    return field.split(".")[0].split(" ")[0] == "data"


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out
