"""Trust what is already built: the data on disk is what was committed, bioviz deletes only
what it wrote, one writer per artifact, and no file is replaced without being asked.

Cases 3, 6, 7 and 8 of the issue (cases 1, 2, 4, 5 are in tests/test_trust_results.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import one_thread_env
from jobs import Tokens
from torch import nn

import bioviz as bv
from bioviz.adapters import TorchAdapter
from bioviz.errors import BiovizError, InputError
from bioviz.store import ActivationStore, StoreError
from bioviz.store.info import describe

pytestmark = pytest.mark.usefixtures("one_thread")

TESTS = Path(__file__).parent


def _identity_store(path, n=1000, chunk_rows=100, **kw):
    """Two layers; row r holds r + 1 in every column (never 0, never NaN)."""
    data = [{"x": torch.full((3,), float(i + 1)), "subject_id": f"S{i // 10}", "sample_id": f"X{i}"}
            for i in range(n)]
    model = nn.Sequential(nn.Identity(), nn.Identity())
    return bv.extract(TorchAdapter(model, input_key="x"), data, ["0", "1"], path,
                      batch_size=64, chunk_rows=chunk_rows, progress=False, **kw)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _identity_store(tmp_path_factory.mktemp("clean") / "s")


@pytest.fixture(scope="module")
def clean_zstd(tmp_path_factory):
    return _identity_store(tmp_path_factory.mktemp("zstd") / "s", compression="zstd")


def _copy(store, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(store.path, dst)
    return dst


def _chunk(path, layer, i) -> Path:
    return Path(path) / "activations.zarr" / layer / "c" / str(i) / "0"


# -- case 3: a missing or altered chunk is never read as data -----------------------------

def test_case3_missing_chunk_is_refused_when_the_store_is_opened(clean, tmp_path):
    p = _copy(clean, tmp_path)
    _chunk(p, "1", 3).unlink()
    with pytest.raises(StoreError, match=r"layer '1' .*chunk 3 \(rows 300\.\.399\)") as e:
        ActivationStore(p)
    assert str(p) in str(e.value)
    # and a reader without bioviz sees NaN there, not zeros that look like data
    raw = zarr.open_array(p / "activations.zarr" / "1", mode="r")[:]
    assert np.isnan(raw[300:400]).all() and not np.isnan(raw[:300]).any()


def test_case3_chunk_missing_after_open_is_an_error_on_read(clean, tmp_path):
    p = _copy(clean, tmp_path)
    st = ActivationStore(p)
    _chunk(p, "0", 7).unlink()
    with pytest.raises(StoreError, match=r"layer '0' .*chunk 7 \(rows 700\.\.799\)"):
        list(st.iter_rows("0"))
    with pytest.raises(StoreError, match=r"layer '0' .*chunk 7"):  # training reads
        list(st.iter_batches("0", batch_size=64, seed=0))
    list(st.iter_rows("1"))  # the other layer is whole


def test_case3_bit_flip_is_found_by_info_verify(clean, tmp_path):
    p = _copy(clean, tmp_path)
    assert "verified: 10 chunks × 2 layers read; 20 match the checksums" in describe(p, verify=True)
    f = _chunk(p, "0", 4)
    raw = bytearray(f.read_bytes())
    raw[41] ^= 0x01  # same size, a value still finite
    f.write_bytes(bytes(raw))
    describe(p)  # opening does not read every chunk
    with pytest.raises(StoreError, match=r"layer '0' chunk 4 \(rows 400\.\.499\).*checksum") as e:
        describe(p, verify=True)
    assert str(p) in str(e.value)
    from bioviz.cli import build_parser

    cfg = build_parser().parse_args(["info", str(p), "--verify", "true"])
    assert cfg.info.verify is True


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_case3_damaged_chunk_read_through_the_store_is_a_store_error(clean, clean_zstd, tmp_path, damage):
    for i, store in enumerate((clean, clean_zstd)):
        p = tmp_path / f"s{i}"
        shutil.copytree(store.path, p)
        f = _chunk(p, "1", 2)
        raw = f.read_bytes()
        f.write_bytes(raw[:len(raw) // 3] if damage == "truncated" else b"\xff" * len(raw))
        st = ActivationStore(p)
        with pytest.raises(StoreError, match=r"layer '1' .*chunk 2 \(rows 200\.\.299\)") as e:
            list(st.iter_rows("1", batch_size=250))
        assert str(p) in str(e.value)
        with pytest.raises(StoreError, match=r"layer '1' .*chunk 2"):
            describe(p, verify=True)


# -- case 6: overwrite deletes only what bioviz wrote --------------------------------------

def _tiny_extract(path, scale=1.0, **kw):
    data = [{"x": torch.full((2,), scale * (i + 1)), "subject_id": f"S{i}"} for i in range(20)]
    return bv.extract(TorchAdapter(nn.Sequential(nn.Identity()), input_key="x"), data, "0", path,
                      batch_size=4, chunk_rows=8, progress=False, **kw)


def test_case6_overwrite_never_deletes_a_foreign_folder(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "manifest.json").write_text(json.dumps({"name": "my web app", "icons": []}))
    (app / "index.html").write_text("<html>precious</html>")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="not an activation store") as e:
            _tiny_extract(app, overwrite=overwrite)
        assert "overwrite=True" not in str(e.value)
    assert sorted(p.name for p in app.iterdir()) == ["index.html", "manifest.json"]
    assert (app / "index.html").read_text() == "<html>precious</html>"


def test_case6_overwrite_never_deletes_files_bioviz_did_not_write(tmp_path):
    s = tmp_path / "s"
    _tiny_extract(s)
    (s / "notes.txt").write_text("my notes")
    with pytest.raises(StoreError, match=r"notes\.txt"):
        _tiny_extract(s, scale=2.0, overwrite=True)
    assert (s / "notes.txt").read_text() == "my notes"
    assert ActivationStore(s).array()[0, 0] == 1.0  # the store itself is untouched
    (s / "notes.txt").unlink()
    assert _tiny_extract(s, scale=2.0, overwrite=True).array()[0, 0] == 2.0  # its own: replaced


def test_overwrite_still_replaces_a_partial_store_of_its_own(tmp_path, monkeypatch):
    import bioviz.store.writer as w

    real = w.pq.write_table

    def once(*a, **k):
        monkeypatch.setattr(w.pq, "write_table", _raise)
        return real(*a, **k)

    monkeypatch.setattr(w.pq, "write_table", once)
    with pytest.raises(RuntimeError, match="killed"):
        _tiny_extract(tmp_path / "s")
    monkeypatch.undo()
    assert (tmp_path / "s" / "_progress.json").exists()
    assert _tiny_extract(tmp_path / "s", scale=3.0, overwrite=True).array()[0, 0] == 3.0


def _raise(*a, **k):
    raise RuntimeError("killed")


def test_case6_brain_cohort_overwrite_never_deletes_a_real_cohort(tmp_path):
    from bioviz.adapters.volume import make_brain_cohort

    real = tmp_path / "real"
    (real / "images").mkdir(parents=True)
    (real / "manifest.csv").write_text("subject_id,image\nP001,images/P001.nii.gz\n")
    (real / "images" / "P001.nii.gz").write_bytes(b"a real scan")
    with pytest.raises(InputError, match="not a cohort make_brain_cohort wrote"):
        make_brain_cohort(real, 2, voxel_mm=6.0, overwrite=True, progress=False)
    assert (real / "images" / "P001.nii.gz").read_bytes() == b"a real scan"
    assert (real / "manifest.csv").exists()

    made = tmp_path / "made"
    make_brain_cohort(made, 2, voxel_mm=6.0, progress=False)
    (made / "images" / "sub-001_notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"sub-001_notes\.txt"):
        make_brain_cohort(made, 2, voxel_mm=6.0, seed=1, overwrite=True, progress=False)
    assert (made / "images" / "sub-001_notes.txt").exists()
    (made / "images" / "sub-001_notes.txt").unlink()
    make_brain_cohort(made, 2, voxel_mm=6.0, seed=1, overwrite=True, progress=False)  # its own
    assert json.loads((made / "cohort.json").read_text())["seed"] == 1
    # overwrite=True on a new folder (as the demo's training script asks) has nothing to replace
    make_brain_cohort(tmp_path / "new", 2, voxel_mm=6.0, overwrite=True, progress=False)
    assert (tmp_path / "new" / "cohort.json").exists()


# -- case 7: one writer per artifact --------------------------------------------------------

JOB = f"""
import os, sys, time
sys.path.insert(0, {str(TESTS)!r})
from jobs import Tokens, tiny_bert
import bioviz as bv
from bioviz.adapters import TorchAdapter
from bioviz.errors import BiovizError

class Slow(Tokens):
    def __getitem__(self, i):
        time.sleep(0.03)
        return super().__getitem__(i)

print("ready", flush=True)
sys.stdin.readline()
try:
    bv.extract(TorchAdapter(tiny_bert()), Slow(120), "encoder.layer.*", sys.argv[1], batch_size=4,
               chunk_rows=50, progress=False)
except BiovizError as e:
    print("refused:", e, flush=True)
    os._exit(3)
print("done", flush=True)
os._exit(0)  # extract returned (its lock released): skip the ~1.5 s teardown of torch and Lightning
"""


def _jobs(store, n: int = 1) -> list[subprocess.Popen]:
    """``n`` writer jobs on ``store``, their imports done (they import side by side: one thread
    each, two fit the two cores), each waiting for "go"."""
    procs = [subprocess.Popen([sys.executable, "-c", JOB, str(store)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**one_thread_env(), "PYTHONUNBUFFERED": "1"}) for _ in range(n)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    return procs


def _go(proc):
    proc.stdin.write("go\n")
    proc.stdin.flush()


def _until_half_way(store, total, proc, timeout=120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        prog = Path(store) / "_progress.json"
        try:
            done = json.loads(prog.read_text())["committed_rows"] if prog.exists() else 0
        except (ValueError, OSError):
            done = 0
        if 0 < done < total:
            return done
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("the first writer never got half-way")


def _total_rows(n):
    data = Tokens(n)
    return sum(int(data[i]["attention_mask"].sum()) for i in range(n))


def test_case7_second_writer_is_refused_and_the_first_completes(tmp_path):
    s, total = tmp_path / "s", _total_rows(120)
    first, second = _jobs(s, 2)
    _go(first)
    _until_half_way(s, total, first)
    _go(second)
    out2, err2 = second.communicate(timeout=300)
    assert second.returncode == 3, (out2, err2)
    assert f"pid {first.pid}" in out2 and "is being written by another process" in out2
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, (out1, err1)
    st = ActivationStore(s)
    assert st.n_rows == total
    assert "verified" in describe(s, verify=True)
    assert not (s / ".bioviz.lock").exists()  # a finished store holds no lock


def test_case7_lock_of_a_killed_writer_is_taken_over(tmp_path, caplog):
    s, total = tmp_path / "s", _total_rows(120)
    proc, = _jobs(s)
    _go(proc)
    _until_half_way(s, total, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    holder = json.loads((s / ".bioviz.lock").read_text())
    assert holder["pid"] == proc.pid
    from jobs import tiny_bert

    with caplog.at_level(logging.WARNING):
        st = bv.extract(TorchAdapter(tiny_bert()), Tokens(120), "encoder.layer.*", s, batch_size=4,
                        chunk_rows=50, progress=False)
    assert f"pid {proc.pid}" in caplog.text and "no longer running" in caplog.text
    assert st.n_rows == total and not (s / ".bioviz.lock").exists()


def test_case7_two_store_writers_in_one_process(tmp_path):
    from bioviz.store import StoreWriter

    a = StoreWriter(tmp_path / "s", {"x": 1}, chunk_rows=4)
    a.open()
    b = StoreWriter(tmp_path / "s", {"x": 1}, chunk_rows=4)
    with pytest.raises(BiovizError, match=f"pid {os.getpid()}"):
        b.open()
    a.close()
    assert b.open() is not None  # released by close
    b.close()


def test_case7_without_flock_the_holder_record_decides(tmp_path, monkeypatch):
    import bioviz.lock as lk

    monkeypatch.setattr(lk, "fcntl", None)  # a file system without flock
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    lk.lock_path(tmp_path).write_text(json.dumps({"pid": int(dead.stdout), "host": lk.socket.gethostname(),
                                                  "started": 0}))
    with lk.ArtifactLock(tmp_path) as held:  # its holder is gone: taken over
        assert held.holder()["pid"] == os.getpid()
        with pytest.raises(lk.LockedError, match=f"pid {os.getpid()}"):
            lk.ArtifactLock(tmp_path).acquire()
    assert not lk.lock_path(tmp_path).exists()


@pytest.fixture(scope="module")
def sae_dir(clean, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae")
    bv.train(clean.path, layer="0", max_steps=3, batch_size=64, output_dir=str(out),
             sae={"architecture": "topk", "expansion_factor": 2, "k": 2},
             trainer={"enable_progress_bar": False, "logger": False, "enable_checkpointing": False})
    return out / "topk"


def test_case7_every_artifact_writer_takes_the_lock(clean, sae_dir, tmp_path):
    from bioviz.lock import ArtifactLock, LockedError
    from bioviz.sae import load_sae, save_sae

    sae = load_sae(sae_dir)
    folder = tmp_path / "sae"
    folder.mkdir()
    with ArtifactLock(folder, "SAE folder"):
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            save_sae(sae, folder)
    save_sae(sae, folder)
    assert not (folder / ".bioviz.lock").exists()

    out = tmp_path / "train"
    out.mkdir()
    with ArtifactLock(out, "SAE output folder"):
        with pytest.raises(LockedError, match="is being written by another process"):
            bv.train(clean.path, layer="0", max_steps=2, batch_size=64, output_dir=str(out),
                     sae={"architecture": "topk", "expansion_factor": 2, "k": 2},
                     trainer={"enable_progress_bar": False, "logger": False, "enable_checkpointing": False})
    assert not (out / "topk").exists()

    ft = tmp_path / "ft.h5ad"
    with ArtifactLock(ft, "FeatureTable", folder=False):
        with pytest.raises(LockedError, match="is being written by another process"):
            bv.encode(sae, clean, out=str(ft), progress=False)
    assert not ft.exists()
    bv.encode(sae, clean, out=str(ft), progress=False)
    assert ft.exists() and not list(tmp_path.glob(".ft.h5ad*"))


# -- case 8: encode --out never replaces a file unasked -------------------------------------

def test_case8_encode_out_refuses_to_overwrite_an_existing_file(clean, sae_dir, tmp_path, capsys):
    from bioviz.cli import main

    other = tmp_path / "cohort.h5ad"
    other.write_bytes(b"somebody's data")
    for overwrite in (False, True):
        with pytest.raises(InputError, match="not a FeatureTable bioviz wrote"):
            bv.encode(str(sae_dir), clean, out=str(other), progress=False, overwrite=overwrite)
    assert other.read_bytes() == b"somebody's data"

    ft = tmp_path / "ft.h5ad"
    bv.encode(str(sae_dir), clean, out=str(ft), progress=False)
    stamp = ft.stat().st_mtime_ns
    args = ["encode", str(sae_dir), "--store", str(clean.path), "--out", str(ft), "--progress", "false"]
    assert main(args) == 1
    assert "already holds a FeatureTable; pass overwrite=True" in capsys.readouterr().err
    assert ft.stat().st_mtime_ns == stamp
    assert main([*args, "--overwrite", "true"]) == 0
    assert ft.stat().st_mtime_ns != stamp
