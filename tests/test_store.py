import json

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from torch import nn

import bioviz as bv
from bioviz.adapters import TorchAdapter
from bioviz.store import ActivationStore, StoreError


@pytest.fixture(scope="module")
def indexed_store(tmp_path_factory):
    """A store whose row r holds the value r in every column (an identity model over
    items that are their own index), so batches reveal which rows they hold."""
    path = tmp_path_factory.mktemp("st") / "s"
    data = [{"x": torch.full((3,), float(i)), "subject_id": f"S{i // 10}", "sample_id": f"X{i}"} for i in range(1000)]
    return bv.extract(TorchAdapter(nn.Sequential(nn.Identity()), input_key="x"), data, "0", path,
                      batch_size=64, chunk_rows=100, progress=False)


def _ids(batch):
    return batch[:, 0].astype(int)


def test_shuffled_epoch_covers_every_row_once_and_is_seeded(indexed_store):
    batches = list(indexed_store.iter_batches(batch_size=128, buffer_rows=300, seed=1))
    seen = np.concatenate([_ids(b) for b in batches])
    assert sorted(seen) == list(range(1000))
    assert [len(b) for b in batches][:-1] == [128] * (len(batches) - 1)
    again = np.concatenate([_ids(b) for b in indexed_store.iter_batches(batch_size=128, buffer_rows=300, seed=1)])
    other = np.concatenate([_ids(b) for b in indexed_store.iter_batches(batch_size=128, buffer_rows=300, seed=2)])
    next_epoch = np.concatenate([_ids(b) for b in indexed_store.iter_batches(batch_size=128, buffer_rows=300, seed=1, epoch=1)])
    assert (seen == again).all() and not (seen == other).all() and not (seen == next_epoch).all()
    assert not (seen == np.arange(1000)).all()


def test_buffer_bounds_what_is_held(indexed_store):
    # read-ahead is bounded: by batch j the iterator has touched no more chunks than the
    # rows it handed out need, plus one buffer's worth
    seen: set[int] = set()
    for j, b in enumerate(indexed_store.iter_batches(batch_size=64, buffer_rows=100, seed=0)):
        seen |= set(_ids(b) // 100)
        assert len(seen) <= -(-(j + 1) * 64 // 100) + 1
    assert len(seen) == 10


def test_ranks_split_chunks_and_yield_equal_batch_counts(indexed_store):
    per_rank = [list(indexed_store.iter_batches(batch_size=50, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert len({len(b) for b in per_rank}) == 1
    chunks = [set(np.concatenate([_ids(b) for b in bs]) // 100) for bs in per_rank]
    assert not (chunks[0] & chunks[1]) and not (chunks[1] & chunks[2]) and not (chunks[0] & chunks[2])
    with pytest.raises(ValueError, match="larger than the rows one of"):
        next(indexed_store.iter_batches(batch_size=1000, world_size=2))


def test_in_order_stream_with_obs(indexed_store):
    starts, got = [], []
    for start, rows, obs in indexed_store.iter_rows(batch_size=256, with_obs=True):
        starts.append(start)
        got.append(_ids(rows))
        assert (obs["sample_id"].to_numpy() == np.array([f"X{i}" for i in _ids(rows)])).all()
    assert starts == [0, 256, 512, 768] and (np.concatenate(got) == np.arange(1000)).all()


def test_dask_and_pandas_read_without_bioviz(indexed_store):
    import dask.array as da

    arr = da.from_zarr(str(indexed_store.path / "activations.zarr"), component="0")
    assert float(arr[:, 0].sum().compute()) == sum(range(1000))
    obs = pd.read_parquet(indexed_store.path / "obs.parquet")
    assert obs["subject_id"].nunique() == 100 and len(obs) == 1000


def _copy(store, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(store.path, dst)
    return dst


def test_manifest_disagreeing_with_arrays_is_refused(indexed_store, tmp_path):
    p = _copy(indexed_store, tmp_path)
    m = json.loads((p / "manifest.json").read_text())
    m["n_rows"] = 999
    (p / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match=r"array shape \(1000, 3\) disagrees with the manifest \(999 rows"):
        ActivationStore(p)
    m["n_rows"] = 1000
    (p / "manifest.json").write_text(json.dumps(m))
    zarr.open_array(p / "activations.zarr" / "0", mode="r+").resize((1000, 2))
    with pytest.raises(StoreError, match="disagrees with the manifest"):
        ActivationStore(p)


def test_missing_or_damaged_parts_are_refused(indexed_store, tmp_path):
    p = _copy(indexed_store, tmp_path)
    pd.read_parquet(p / "obs.parquet").iloc[:10].to_parquet(p / "obs.parquet")
    with pytest.raises(StoreError, match="has 10 rows but the manifest says 1000"):
        ActivationStore(p)
    (p / "manifest.json").write_text("{ not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        ActivationStore(p)
    with pytest.raises(StoreError, match="manifest.json not found"):
        ActivationStore(tmp_path / "nothing")


def test_layer_selection(indexed_store):
    assert indexed_store.layers == ["0"] and indexed_store.dim() == 3
    with pytest.raises(KeyError, match="it has"):
        indexed_store.array("nope")
