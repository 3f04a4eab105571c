"""Trust what is already built: a config cannot run code (case 9), the command line prints a
user error's message alone (10), a damaged or malformed input is an error naming the file
(11), and sweep values cannot leave the output folder (12)."""

import json
import re
import subprocess
import sys
from argparse import ArgumentError
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from safetensors.torch import save_file
from torch import nn

import bioviz as bv
from bioviz.adapters import TorchAdapter
from bioviz.adapters.singlecell.source import CellSource
from bioviz.adapters.weights import WeightsError, load_weights
from bioviz.cli import main
from bioviz.errors import BiovizError, InputError
from bioviz.sae import SAEConfig, build_sae, load_sae
from bioviz.sae.train import SAEModule
from bioviz.store import ActivationStore, StoreError

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "experiments" / "extract_example.yaml"
# the example config's small model (transformers model classes are on the default allow-list)
MODEL = yaml.safe_load(CONFIG.read_text())["adapter"]["init_args"]["model"]


class TouchDataset(torch.utils.data.Dataset):
    """A dataset outside the allow-list whose construction leaves a mark."""

    def __init__(self, marker: str):
        Path(marker).touch()

    def __len__(self):
        return 0

    def __getitem__(self, i):
        raise IndexError(i)


class TouchCallback(Callback):
    """A Lightning callback outside the allow-list whose construction leaves a mark."""

    def __init__(self, marker: str):
        Path(marker).touch()


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("st") / "store"
    data = [{"x": torch.full((3,), float(i)), "subject_id": f"S{i // 4}", "sample_id": f"X{i}"}
            for i in range(40)]
    return bv.extract(TorchAdapter(nn.Sequential(nn.Identity()), input_key="x"), data, "0", path,
                      batch_size=16, chunk_rows=16, progress=False)


def _copy_store(store, dest: Path) -> Path:
    import shutil

    shutil.copytree(store.path, dest)
    return dest


def _run(argv):
    """main's exit status, whether it returns one or raises SystemExit."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


# -- case 9: a config is data, not code ------------------------------------------------------


def test_case9_config_cannot_run_shell_commands(tmp_path, capsys):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(yaml.safe_dump({
        "adapter": {"class_path": "bioviz.adapters.TorchAdapter", "init_args": {"model": MODEL}},
        "data": {"class_path": "torch.utils.data.datapipes.map.Mapper", "init_args": {
            "datapipe": {"class_path": "torch.utils.data.datapipes.map.SequenceWrapper",
                         "init_args": {"sequence": [f"touch {marker}"]}},
            "fn": "os.system"}},
        "layers": ["encoder.layer.*"],
        "store_path": str(tmp_path / "store"),
        "progress": False,
    }))
    try:
        code = main(["extract", "--config", str(cfg)])
    except Exception as e:  # the code as it was: the command ran, then the run failed
        code = repr(e)
    except SystemExit as e:
        code = e.code
    assert not marker.exists(), "the config ran a shell command"
    assert code == 2
    err = capsys.readouterr().err
    assert "torch.utils.data.datapipes.map.Mapper" in err and "--trust_config" in err
    assert "Traceback" not in err and not (tmp_path / "store").exists()


def test_case9_callable_values_come_from_the_allow_list_too(tmp_path, capsys):
    # a Callable-typed parameter of an allowed class resolves a dotted path as well
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(yaml.safe_dump({
        "trainer": {"max_steps": 1, "default_root_dir": str(tmp_path / "runs"),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.LambdaCallback",
                                   "init_args": {"setup": "os.system"}}]},
        "model": {"output_dir": str(tmp_path / "sae")},
        "data": {"store": str(tmp_path / "no-store"), "layer": "0"},
    }))
    assert _run(["train", "--config", str(cfg)]) == 2
    assert "os.system" in capsys.readouterr().err
    # the hook itself: a Callable option of a parser built while the policy holds
    from jsonargparse import ArgumentParser

    from bioviz.cli import import_policy

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--fn", type=Callable)
    with import_policy():
        assert parser.parse_args(["--fn", "torch.nn.functional.relu"]).fn is torch.nn.functional.relu
        for path in ("os.system", "subprocess.run", "bioviz.cli.os.system", "builtins.exec"):
            with pytest.raises(ArgumentError, match="not allowed"):
                parser.parse_args(["--fn", path])
    with import_policy(trust=True):
        assert parser.parse_args(["--fn", "shutil.rmtree"]).fn.__name__ == "rmtree"


def test_case9_opt_in_flag_allows_other_classes(tmp_path, capsys):
    marker = tmp_path / "built"
    cfg = {
        "adapter": {"class_path": "bioviz.adapters.TorchAdapter", "init_args": {"model": MODEL}},
        "data": {"class_path": f"{__name__}.TouchDataset", "init_args": {"marker": str(marker)}},
        "layers": ["encoder.layer.*"], "store_path": str(tmp_path / "store"), "progress": False,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert _run(["extract", "--config", str(path)]) == 2 and not marker.exists()
    assert "--trust_config" in capsys.readouterr().err
    # with the flag the class is built (the empty dataset then stops the run)
    _run(["extract", "--trust_config", "--config", str(path)])
    assert marker.exists()


def test_case9_train_config_classes_come_from_the_allow_list(tmp_path, capsys):
    marker = tmp_path / "built"
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(yaml.safe_dump({
        "trainer": {"max_steps": 1, "default_root_dir": str(tmp_path / "runs"),
                    "callbacks": [{"class_path": f"{__name__}.TouchCallback",
                                   "init_args": {"marker": str(marker)}}]},
        "model": {"output_dir": str(tmp_path / "sae")},
        "data": {"store": str(tmp_path / "no-store"), "layer": "0"},
    }))
    assert _run(["train", "--config", str(cfg)]) == 2 and not marker.exists()
    assert "TouchCallback" in capsys.readouterr().err
    # opted in, the callback is built; the missing store then ends the run with its message
    assert _run(["train", "--config", str(cfg), "--trust_config"]) == 1 and marker.exists()
    assert "no-store" in capsys.readouterr().err


def test_case9_the_allow_list_is_lifted_after_parsing(tmp_path):
    from jsonargparse import ArgumentParser, _common

    before = {k: _common.parsing_settings[k] for k in ("import_path_verdicts", "import_paths_enforced")}
    _run(["layers", "--config", str(CONFIG)])
    after = {k: _common.parsing_settings[k] for k in ("import_path_verdicts", "import_paths_enforced")}
    assert after == before
    # another jsonargparse parser in the process is not limited by bioviz's list
    p = ArgumentParser(exit_on_error=False)
    p.add_argument("--t", type=type)
    assert p.parse_args(["--t", "collections.OrderedDict"]).t.__name__ == "OrderedDict"


# -- case 10: the message alone, the traceback with --debug ----------------------------------


def test_case10_user_error_prints_the_message_alone(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert _run(["info", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error: {missing} is not an activation store: manifest.json not found"


def test_case10_debug_gives_the_traceback(tmp_path):
    with pytest.raises(StoreError, match="manifest.json not found"):
        main(["--debug", "info", str(tmp_path / "nowhere")])
    with pytest.raises(StoreError):
        main(["info", str(tmp_path / "nowhere"), "--debug"])


def test_case10_config_errors_print_jsonargparses_message(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert _run(["extract", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "missing.yaml" in err and "Traceback" not in err
    assert _run(["extract", "--config", str(CONFIG), "--batch_size", "many"]) == 2
    assert "batch_size" in capsys.readouterr().err
    # a value that only fails when the object is built (jsonargparse wraps the class's error)
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["data"]["init_args"]["arrays"] = str(tmp_path / "missing.npz")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert _run(["extract", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.npz" in err and "Traceback" not in err
    # --debug: jsonargparse's error is raised, with its traceback
    with pytest.raises(Exception, match="batch_size"):
        main(["extract", "--config", str(CONFIG), "--batch_size", "many", "--debug"])


def test_case10_train_errors_print_the_message_alone(tmp_path, capsys):
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(yaml.safe_dump({
        "trainer": {"max_steps": 1, "default_root_dir": str(tmp_path / "runs")},
        "model": {"output_dir": str(tmp_path / "sae")},
        "data": {"store": str(tmp_path / "no-store"), "layer": "0"},
    }))
    assert _run(["train", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no-store" in err and "Traceback" not in err
    assert _run(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    with pytest.raises(StoreError):
        main(["train", "--config", str(cfg), "--debug"])


def test_case10_the_command_exits_non_zero_with_the_message(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bioviz.cli", "info", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert "manifest.json not found" in done.stderr and "Traceback" not in done.stderr


# -- case 11: a damaged or malformed input names the file ------------------------------------


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def test_case11_truncated_sae_checkpoint_names_the_file(tmp_path):
    build_sae(SAEConfig(d_in=8, d_sae=16, k=2, seed=0)).save(tmp_path)
    _truncate(tmp_path / "sae.safetensors")
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "sae.safetensors"))):
        load_sae(tmp_path)
    (tmp_path / "sae.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="sae.safetensors"):
        load_sae(tmp_path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_case11_truncated_weights_name_the_file(tmp_path, suffix):
    net = nn.Linear(16, 16)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(net.state_dict(), str(path))
    else:
        torch.save(net.state_dict(), path)
    _truncate(path)
    with pytest.raises(WeightsError, match=re.escape(str(path))):
        load_weights(nn.Linear(16, 16), path)


def test_case11_truncated_obs_parquet_names_the_file(small_store, tmp_path):
    path = _copy_store(small_store, tmp_path / "s")
    _truncate(path / "obs.parquet")
    with pytest.raises(StoreError, match=re.escape(str(path / "obs.parquet"))):
        ActivationStore(path)
    (path / "obs.parquet").write_text("not parquet")
    with pytest.raises(StoreError, match="obs.parquet"):
        ActivationStore(path)


@pytest.mark.parametrize("edit, words", [
    (lambda m: [m], ["a JSON object"]),
    (lambda m: {k: v for k, v in m.items() if k != "n_rows"}, ["n_rows"]),
    (lambda m: {**m, "n_rows": "40"}, ["n_rows"]),
    (lambda m: {**m, "n_rows": -1}, ["n_rows"]),
    (lambda m: {**m, "chunk_rows": 0}, ["chunk_rows"]),
    (lambda m: {k: v for k, v in m.items() if k != "chunk_rows"}, ["chunk_rows"]),
    (lambda m: {**m, "layers": ["0"]}, ["layers"]),
    (lambda m: {**m, "layers": {"0": {}}}, ["layers", "'d'"]),
    (lambda m: {**m, "layers": {"0": {"d": "3"}}}, ["layers", "'d'"]),
    (lambda m: {k: v for k, v in m.items() if k != "dtype"}, ["dtype"]),
    (lambda m: {**m, "dtype": "int8"}, ["dtype"]),
])
def test_case11_malformed_manifest_names_the_file_and_the_key(small_store, tmp_path, edit, words):
    path = _copy_store(small_store, tmp_path / "s")
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps(edit(manifest)))
    with pytest.raises(StoreError) as err:
        ActivationStore(path)
    for word in [str(path / "manifest.json"), *words]:
        assert word in str(err.value), str(err.value)


def test_case11_a_file_that_is_not_hdf5_given_as_h5ad_names_the_file(tmp_path):
    path = tmp_path / "cohort.h5ad"
    path.write_text("subject_id,gene\nS1,ACTB\n")
    with pytest.raises(InputError, match=re.escape(str(path)) + ".*HDF5"):
        CellSource(path)
    # a truncated h5ad
    adata = ad.AnnData(np.ones((20, 5), dtype=np.float32),
                       obs=pd.DataFrame(index=[f"c{i}" for i in range(20)]))
    adata.write_h5ad(path)
    _truncate(path, 0.3)
    with pytest.raises(InputError, match=re.escape(str(path))):
        CellSource(path)
    # an HDF5 file that is not an AnnData
    import h5py

    with h5py.File(path, "w") as f:
        f["something"] = np.zeros(3)
    with pytest.raises(InputError, match=re.escape(str(path)) + ".*obs"):
        CellSource(path)


# -- case 12: sweep folder names ---------------------------------------------------------------


def test_case12_sweep_values_cannot_escape_the_output_folder(tmp_path):
    module = SAEModule(sae=SAEConfig(expansion_factor=2, k=2), sweep=[{"seed": "../../x"}],
                       output_dir=str(tmp_path / "sae"))
    with pytest.raises(InputError, match=r"sweep\[0\].*seed"):
        module.configs(d_in=8, n_rows=100)


def test_case12_non_integer_seed_is_a_validation_error():
    for seed in (1.5, "3", "../../x", True):
        with pytest.raises(InputError, match=r"seed=.* must be an integer"):
            SAEConfig(d_in=8, d_sae=16, k=2, seed=seed).validate()
    SAEConfig(d_in=8, d_sae=16, k=2, seed=None).validate()
    SAEConfig(d_in=8, d_sae=16, k=2, seed=3).validate()


def test_case12_sweep_folder_names_are_safe_and_distinct(tmp_path):
    module = SAEModule(sae=SAEConfig(architecture="matryoshka", d_sae=64, k=2),
                       sweep=[{"matryoshka_prefixes": [16, 32, 64]}, {"l1_coefficient": 0.5},
                              {"seed": -1}, {"tied_init": False}],
                       output_dir=str(tmp_path / "sae"))
    names = [name for name, _ in module.configs(d_in=8, n_rows=100)]
    assert len(set(names)) == len(names)
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name), name
    same = SAEModule(sae=SAEConfig(expansion_factor=2, k=2), sweep=[{"k": 4}, {"k": 4}])
    with pytest.raises(InputError, match=r"sweep\[1\].*sweep\[0\]"):
        same.configs(d_in=8, n_rows=100)


def test_case12_export_stays_inside_the_output_folder(tmp_path):
    module = SAEModule(sae=SAEConfig(expansion_factor=2, k=2), output_dir=str(tmp_path / "sae"))
    module.saes.append(build_sae(SAEConfig(d_in=8, d_sae=16, k=2, seed=0)))
    module.names.append("../escaped")
    with pytest.raises(InputError, match="escaped"):
        module.export(tmp_path / "sae")
    assert not (tmp_path / "escaped").exists()


def test_user_errors_share_one_base_class():
    assert issubclass(WeightsError, BiovizError) and issubclass(StoreError, BiovizError)
