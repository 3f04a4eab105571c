from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bioviz.cli import main
from bioviz.datasets import ArrayDataset
from bioviz.store import ActivationStore

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "experiments" / "extract_example.yaml"


def test_extract_from_config_then_info_and_layers(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's data paths are relative to the repository root
    store = tmp_path / "store"
    assert main(["extract", "--config", str(CONFIG), "--store_path", str(store), "--progress", "false"]) == 0
    st = ActivationStore(store)
    meta = pd.read_csv(ROOT / "experiments/data/example_tokens.tsv", sep="\t")
    ids = np.load(ROOT / "experiments/data/example_tokens.npz")["attention_mask"]
    assert st.n_rows == ids.sum() and st.layers == ["encoder.layer.0", "encoder.layer.1"]
    assert set(st.obs["subject_id"]) == set(meta["subject_id"]) and "diagnosis" in st.obs
    # the same config with the same seed gives the same weights: a second run is a cache hit
    main(["extract", "--config", str(CONFIG), "--store_path", str(store), "--progress", "false"])
    main(["info", str(store)])
    out = capsys.readouterr().out
    assert f"rows: {st.n_rows}" in out and "8 subjects" in out
    main(["layers", "--config", str(CONFIG), "--max_depth", "3"])
    assert "encoder.layer.1\n" in capsys.readouterr().out


def test_array_dataset_bad_input(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 2)), y=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="same first"):
        ArrayDataset(str(tmp_path / "a.npz"))
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="object arrays are not loaded"):
        ArrayDataset(str(tmp_path / "o.npz"))
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 2)))
    pd.DataFrame({"subject_id": ["a", "b"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match="has 2 rows but .* holds 4 items"):
        ArrayDataset(str(tmp_path / "b.npz"), str(tmp_path / "m.csv"))
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        ArrayDataset(str(tmp_path / "nope.npz"))
