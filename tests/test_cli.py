import inspect
import logging
import re
import warnings
from pathlib import Path

import docstring_parser
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

import bioviz as bv
from bioviz import cli
from bioviz.adapters import TorchAdapter
from bioviz.adapters.datasets import ArrayDataset
from bioviz.cli import main
from bioviz.demo import run
from bioviz.extract import extract
from bioviz.features import encode
from bioviz.interpret import interpret
from bioviz.report import report
from bioviz.sae.data import ActivationDataModule
from bioviz.sae.train import SAEModule
from bioviz.store import ActivationStore
from bioviz.store.info import describe

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "experiments" / "extract_example.yaml"

# subcommand: (the function its parser is built from, parameters left to Python)
STAGES = {
    "extract": (extract, {"extra_manifest"}),
    "layers": (cli.layers, set()),
    "encode": (encode, set()),
    "info": (describe, set()),
    "demo": (run, set()),
    "interpret": (interpret, set()),
    "report": (report, set()),
}


@pytest.fixture
def no_deprecations(monkeypatch):
    """Every jsonargparse deprecation is shown (not only the first of each kind), and none is."""
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "all")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    # (LightningCLI's own calls, such as add_instantiator, are Lightning's to update)
    shown = [f"{w.filename}: {w.message}" for w in caught
             if type(w.message).__name__ == "JsonargparseDeprecationWarning"
             and f"{Path('lightning', 'pytorch')}" not in w.filename]
    assert not shown, shown


def test_extract_from_config_then_info_and_layers(tmp_path, capsys, monkeypatch, no_deprecations):
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


@pytest.mark.parametrize("command", STAGES)
def test_each_subcommand_is_built_from_its_functions_signature(command, capsys):
    fn, python_only = STAGES[command]
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    params = [p for p in inspect.signature(fn).parameters if p not in python_only]
    for p in params:  # an option, or a positional argument (listed by name)
        assert re.search(rf"(?m)^\s+(--{p}\b|{p}\s)", out), f"bioviz {command} --help lacks {p}"
    # the help of each argument is the function's docstring for it
    flat = "".join(out.split())
    for doc in docstring_parser.parse(inspect.getdoc(fn)).params:
        if doc.arg_name in params and doc.description:
            assert "".join(doc.description.split()[:6]) in flat, (command, doc.arg_name)


def test_train_help_is_lightningcli_over_the_module_and_datamodule(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: bioviz train")
    assert all(f"--model.{p}" in out for p in inspect.signature(SAEModule).parameters)
    assert all(f"--data.{p}" in out for p in inspect.signature(ActivationDataModule).parameters)
    assert "--ckpt_path" in out and "--trainer.max_steps" in out
    assert "--optimizer" not in out  # SAEModule configures its own optimisers


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"bioviz {bv.__version__}"


def test_layers_builds_the_adapter_but_never_the_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["data"]["init_args"]["arrays"] = str(tmp_path / "missing.npz")  # building it would fail
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["extract", "--config", str(path)]) == 1  # the config's error, printed alone
    assert re.search("arrays file not found: .*missing.npz", capsys.readouterr().err)
    assert main(["layers", "--config", str(path)]) == 0
    names = capsys.readouterr().out.split()
    assert "encoder.layer.1" in names and "encoder.layer.1.attention.self.query" in names
    main(["layers", "--config", str(path), "--max_depth", "2"])
    shallow = capsys.readouterr().out.split()
    assert shallow == [n for n in names if n.count(".") < 2] and "encoder.layer" in shallow


def test_train_then_encode_from_the_command_line(tmp_path, capsys, no_deprecations):
    x = torch.randn(600, 8)
    data = [{"x": x[i], "subject_id": f"S{i // 50}", "sample_id": f"X{i}"} for i in range(len(x))]
    store = bv.extract(TorchAdapter(nn.Sequential(nn.Identity()), input_key="x"), data, "0",
                       tmp_path / "store", batch_size=200, progress=False)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({
        "trainer": {"max_steps": 4, "log_every_n_steps": 2, "default_root_dir": str(tmp_path / "runs")},
        "model": {"output_dir": str(tmp_path / "sae"),
                  "sae": {"architecture": "topk", "expansion_factor": 2, "k": 4}},
        "data": {"store": str(store.path), "batch_size": 100},
    }))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    lightning_log = logging.getLogger("lightning.pytorch")
    lightning_log.addHandler(handler)
    try:
        assert main(["train", "--config", str(cfg)]) == 0
    finally:
        lightning_log.removeHandler(handler)
    assert not [r.getMessage() for r in records if "Tip" in r.getMessage()]
    assert not [w for w in no_deprecations if "LeafSpec" in str(w.message) or "tensorboard" in str(w.message)]
    assert (tmp_path / "runs" / "lightning_logs" / "version_0" / "metrics.csv").is_file()  # explicit CSVLogger
    sae = bv.load_sae(tmp_path / "sae" / "topk")
    assert sae.cfg.training["steps"] == 4
    capsys.readouterr()
    main(["encode", str(tmp_path / "sae" / "topk"), "--store", str(store.path),
          "--out", str(tmp_path / "ft.h5ad"), "--progress", "false"])
    assert "AnnData object with n_obs × n_vars = 600 × 16" in capsys.readouterr().out
    assert (tmp_path / "ft.h5ad").is_file()
