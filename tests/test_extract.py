import errno
import json
import random
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import kill_resume as kr  # noqa: E402  (shared with benchmarks/foundation.py)
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import one_thread_env
from jobs import Tokens, tiny_bert
from torch import nn

import bioviz as bv
from bioviz.adapters import TorchAdapter
from bioviz.store import StoreError

JOB = Path(__file__).with_name("jobs.py")


def _extract(path, model=None, data=None, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("chunk_rows", 50)
    kw.setdefault("progress", False)
    model = tiny_bert() if model is None else model
    data = Tokens(40) if data is None else data
    return bv.extract(TorchAdapter(model), data, kw.pop("layers", "encoder.layer.*"), path, **kw)


def test_rows_match_the_model_token_by_token(tmp_path):
    model, data = tiny_bert(), Tokens(12)
    st = _extract(tmp_path / "s", model, data)
    obs = st.obs
    assert len(obs) == sum(int(data[i]["attention_mask"].sum()) for i in range(12))  # padding dropped
    assert list(obs.columns) == ["subject_id", "sample_id", "age", "token_index"]  # case 17: was `A or B`
    rows = st.array("encoder.layer.1")[:]
    item = data[5]
    with torch.no_grad():
        ref = model(input_ids=item["input_ids"][None], attention_mask=item["attention_mask"][None],
                    output_hidden_states=True).hidden_states[2][0]
    sel = (obs["sample_id"] == "X0005").to_numpy()
    np.testing.assert_allclose(rows[sel], ref[: sel.sum()].numpy(), atol=1e-5)
    assert obs.loc[sel, "token_index"].tolist() == list(range(sel.sum()))
    assert set(obs.loc[sel, "subject_id"]) == {item["subject_id"]} and set(obs.loc[sel, "age"]) == {item["age"]}
    assert st.manifest["model"]["weights_blake2b"] and st.manifest["n_items"] == 12


def test_finished_store_is_reused_and_other_config_refused(tmp_path):
    _extract(tmp_path / "s")
    stamp = (tmp_path / "s" / "manifest.json").stat().st_mtime_ns
    _extract(tmp_path / "s")  # same configuration: nothing recomputed
    assert (tmp_path / "s" / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(StoreError, match=r"different configuration \(differs in: .*model\.weights_blake2b"):
        _extract(tmp_path / "s", model=tiny_bert(seed=1))
    _extract(tmp_path / "s", model=tiny_bert(seed=1), overwrite=True)
    assert (tmp_path / "s" / "manifest.json").stat().st_mtime_ns != stamp


def test_path_holding_something_else_is_refused(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "thesis.docx").write_text("precious")
    with pytest.raises(StoreError, match="holds something else"):
        _extract(tmp_path / "s")
    assert (tmp_path / "s" / "thesis.docx").read_text() == "precious"
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        _extract(tmp_path / "f")


def test_half_written_store_from_another_config_is_refused(tmp_path, monkeypatch, tree):
    _fail_on_parquet_write(monkeypatch, after=2, err=RuntimeError("killed"))
    with pytest.raises(RuntimeError, match="killed"):
        _extract(tmp_path / "s")
    monkeypatch.undo()
    with pytest.raises(StoreError, match=r"partial extraction .*differs in: layers"):
        _extract(tmp_path / "s", layers="encoder.layer.0")
    assert json.loads((tmp_path / "s" / "_progress.json").read_text())["n_chunks"] == 2  # kept


def _fail_on_parquet_write(monkeypatch, after, err):
    import bioviz.store.writer as w

    real, calls = w.pq.write_table, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] > after:
            raise err
        return real(*a, **k)

    monkeypatch.setattr(w.pq, "write_table", flaky)


def test_disk_full_keeps_committed_chunks_and_resumes_identically(tmp_path, monkeypatch, tree):
    clean = _extract(tmp_path / "clean")
    _fail_on_parquet_write(monkeypatch, after=3, err=OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(StoreError, match=r"disk full while writing chunk 3 .* 3 chunks committed"):
        _extract(tmp_path / "s")
    monkeypatch.undo()
    assert json.loads((tmp_path / "s" / "_progress.json").read_text())["committed_rows"] == 150
    with pytest.raises(StoreError, match="unfinished extraction"):
        bv.ActivationStore(tmp_path / "s")
    _extract(tmp_path / "s")
    assert tree(tmp_path / "s") == tree(clean.path)


def test_resume_removes_a_chunk_write_that_a_kill_cut_short(tmp_path, monkeypatch, tree):
    """zarr writes a chunk to a temporary ``c/<i>/0.<uuid>.partial`` file and renames it; a
    SIGKILL between the two leaves that file. The resumed store must not keep it."""
    clean = _extract(tmp_path / "clean")
    _fail_on_parquet_write(monkeypatch, after=3, err=OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(StoreError):
        _extract(tmp_path / "s")
    monkeypatch.undo()
    layer_dir = next(p for p in (tmp_path / "s" / "activations.zarr").iterdir() if p.is_dir())
    strays = [layer_dir / "c" / "4" / "0.0123456789abcdef.partial",  # a chunk's temp file
              layer_dir / "zarr.0123456789abcdef.partial"]  # the array metadata's
    for stray in strays:
        stray.parent.mkdir(parents=True, exist_ok=True)
        stray.write_bytes(b"half written")
    _extract(tmp_path / "s")
    assert not any(stray.exists() for stray in strays)
    assert tree(tmp_path / "s") == tree(clean.path)


@pytest.mark.parametrize("policy", ["error", "drop"])
def test_nonfinite_rows_error_or_drop(tmp_path, policy):
    class Sqrt(nn.Module):  # NaN where an input is negative, as a real log/sqrt layer gives
        def forward(self, x):
            return torch.sqrt(x)

    x = torch.rand(20, 3, generator=torch.Generator().manual_seed(0))
    x[[3, 11], 0] = -1.0
    data = [{"x": x[i], "subject_id": f"S{i}", "sample_id": f"X{i}"} for i in range(20)]
    model = nn.Sequential(nn.Identity(), Sqrt())
    if policy == "error":
        with pytest.raises(StoreError, match=r"layer '1' .*NaN/Inf activations in 1 rows of batch 0 .*X3"):
            bv.extract(TorchAdapter(model, input_key="x"), data, "1", tmp_path / "s", batch_size=8, progress=False)
    else:
        with pytest.warns(UserWarning, match="2 rows with NaN/Inf"):
            st = bv.extract(TorchAdapter(model, input_key="x"), data, "1", tmp_path / "s", batch_size=8,
                            progress=False, nonfinite="drop")
        assert st.n_rows == 18 and st.manifest["dropped_nonfinite_rows"] == 2
        assert "X3" not in set(st.obs["sample_id"]) and np.isfinite(st.array()[:]).all()


def test_dtype_limits(tmp_path):
    big = nn.Sequential(nn.Linear(3, 4))
    with torch.no_grad():
        big[0].weight.fill_(1e5)
    data = [torch.ones(3)] * 4
    with pytest.raises(StoreError, match=r"float16 cannot hold.*dtype='float32'"):
        bv.extract(TorchAdapter(big), data, "0", tmp_path / "a", dtype="float16", progress=False)
    with pytest.raises(StoreError, match=r"dtype='int8'.*float16 or float32"):
        bv.extract(TorchAdapter(big), data, "0", tmp_path / "b", dtype="int8", progress=False)
    emb = nn.Sequential(nn.Identity())
    with pytest.raises(StoreError, match=r"layer '0' produces torch.int64"):
        bv.extract(TorchAdapter(emb), [torch.arange(3)] * 2, "0", tmp_path / "c", progress=False)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="close matches: encoder.layer.0"):
        _extract(tmp_path / "s", layers="encoder.layer0")
    with pytest.raises(ValueError, match="nonfinite='skip'"):
        _extract(tmp_path / "s", nonfinite="skip")
    with pytest.raises(StoreError, match="data is empty"):
        _extract(tmp_path / "s", data=Tokens(0))
    with pytest.raises(TypeError, match="TorchAdapter"):
        bv.extract(tiny_bert(), Tokens(2), "encoder", tmp_path / "s")
    assert not (tmp_path / "s").exists()  # nothing half-written by refused calls


def test_obs_readable_without_bioviz(tmp_path):
    import dask.array as da
    import pandas as pd

    st = _extract(tmp_path / "s", dtype="float16")
    arr = da.from_zarr(str(tmp_path / "s" / "activations.zarr"), component="encoder.layer.0").compute()
    np.testing.assert_array_equal(arr, st.array("encoder.layer.0")[:])
    assert arr.dtype == np.float16 and arr.shape == (st.n_rows, 32)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "s" / "obs.parquet"), st.obs)
    assert pq.ParquetFile(tmp_path / "s" / "obs.parquet").metadata.num_rows == st.n_rows


MID_RUN_KILLS = 3


class _Jobs:
    """Extraction jobs (``jobs.py -``) started ahead of need: a job's imports take ~6 s and its
    extraction ~1 s, so the jobs a test will use import two at a time (the two cores), before
    and while the others run, and each waits for its store's path. One thread each."""

    def __init__(self, n_ready: int, n_more: int):
        self.env = {**one_thread_env(), "PYTHONUNBUFFERED": "1"}
        self.ready, self.importing, self.all = [], [], []
        for i in range(0, n_ready, 2):
            pair = [self._spawn() for _ in range(min(2, n_ready - i))]
            self.ready += [self._wait(p) for p in pair]
        self.importing = [self._spawn() for _ in range(n_more)]

    def _spawn(self) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, str(JOB), "-", "300"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env=self.env, text=True)
        self.all.append(proc)
        return proc

    @staticmethod
    def _wait(proc) -> subprocess.Popen:
        assert proc.stdout.readline().strip() == "ready"  # imports done: the extraction starts on its path
        return proc

    def start(self, path) -> subprocess.Popen:
        """A job extracting into ``path`` from now on (one started now if none is left)."""
        proc = self.ready.pop(0) if self.ready else self._wait((self.importing or [self._spawn()]).pop(0))
        proc.stdin.write(f"{path}\n")
        proc.stdin.flush()
        return proc

    def close(self):
        for proc in self.all:
            proc.kill()
            proc.wait()


@pytest.fixture
def jobs():
    # the clean run and the three kills ready before the first starts; the last resume imports meanwhile
    pool = _Jobs(n_ready=1 + MID_RUN_KILLS, n_more=1)
    yield pool
    pool.close()


@pytest.mark.slow
def test_sigkill_mid_extraction_resumes_byte_identical_without_rewriting(tmp_path, tree, jobs):
    """SIGKILL the extraction process while it runs (on progress: once ``_progress.json`` shows
    committed rows, before the last chunk), three times, then let it finish: every resume
    keeps the committed chunks' files untouched, and the store ends byte-identical to an
    uninterrupted run's. Kills that land outside the extraction are not counted."""
    start = jobs.start
    clean = tmp_path / "clean"
    proc = start(clean)
    per_chunk = kr.commit_interval(proc, clean)
    assert proc.wait() == 0
    manifest = json.loads((clean / "manifest.json").read_text())
    total, chunk = manifest["n_rows"], manifest["chunk_rows"]
    last = (total - 1) // chunk  # the most chunks committed while the extraction still runs
    assert last >= 2 * MID_RUN_KILLS, (total, chunk)
    rng = random.Random(0)
    # kill after these chunks, each at a random moment within the next chunk's work (its
    # forward or its commit); never after the last two full chunks, so it cannot race the end
    targets = sorted(rng.sample(range(1, last - 1), MID_RUN_KILLS))
    stores = [tmp_path / f"s{i}" for i in range(3)]  # a fresh one when a kill came too late
    s, landed, late = stores.pop(0), [], 0
    for _ in range(3 * MID_RUN_KILLS):
        done = (kr.progress(s) or {"n_chunks": 0})["n_chunks"]
        target = next((t for t in targets if t > done), done + 1)
        before = kr.committed_files(s)
        proc = start(s)
        if kr.kill_on_progress(proc, s, target * chunk, total, rng.uniform(0.0, per_chunk)):
            landed.append(kr.progress(s)["committed_rows"])
        assert kr.rewritten(before, s) == [], "a resume rewrote chunks that were committed"
        if (s / "manifest.json").exists():  # the kill came after the end: start again (not counted)
            late += 1
            assert stores, f"{late} kills came after the end of the extraction"
            s, landed = stores.pop(0), []
        if len(landed) == MID_RUN_KILLS:
            break
    assert len(landed) == MID_RUN_KILLS, f"only {len(landed)} kills landed inside the extraction ({late} too late)"
    assert landed == sorted(landed) and len(set(landed)) == MID_RUN_KILLS, landed  # each resume got further
    before = kr.committed_files(s)
    assert len(before) == 4 * (landed[-1] // chunk)  # 3 layers' chunk files + obs parts
    proc = start(s)
    assert proc.wait() == 0 and proc.stdout.read().strip() == "done"
    assert kr.rewritten(before, s) == [], "the last resume rewrote chunks that were committed"
    got, want = tree(s), tree(clean)
    assert sorted(set(got) - set(want)) == [], "files an uninterrupted run does not leave (from a killed write)"
    assert got == want
