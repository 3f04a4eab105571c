"""The statistics stage on real artifacts: a model run into a store, SAEs trained with two
seeds, a FeatureTable; associate streams, probes raw activations and reproduces candidates
across seeds; the CLI runs a config."""

import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

import bioviz as bv
from bioviz.adapters import TorchAdapter

N_SUBJECTS, PER_SUBJECT, D = 32, 12, 8

pytestmark = pytest.mark.usefixtures("one_thread")  # a 16-unit model and small SAEs (conftest.py)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Items are rows: 12 per subject; cases carry a shift along one input direction,
    every row a random 'region' flag that also shifts another direction (a row label)."""
    tmp = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    case = rng.permutation(np.arange(N_SUBJECTS) % 2 == 1)
    items = []
    for s in range(N_SUBJECTS):
        offset = rng.normal(0, 0.3, D)
        for _ in range(PER_SUBJECT):
            region = bool(rng.random() < 0.5)
            x = rng.normal(0, 1, D) + offset
            x[0] += 2.5 * case[s]
            x[1] += 2.5 * region
            items.append({"x": torch.tensor(x, dtype=torch.float32), "subject_id": f"P{s:02d}",
                          "sample_id": f"P{s:02d}", "dx": "case" if case[s] else "control",
                          "region": int(region)})
    store = bv.extract(TorchAdapter(model, input_key="x"), items, "1", str(tmp / "store"), progress=False)
    saes = []
    for seed in (0, 1):
        sae, = bv.train(store.path, max_steps=150, batch_size=128, output_dir=str(tmp / f"sae{seed}"), seed=seed,
                        sae={"architecture": "topk", "expansion_factor": 2, "k": 4},
                        trainer={"enable_progress_bar": False})
        saes.append(sae)
    ft = bv.encode(saes[0], out=str(tmp / "features.h5ad"), progress=False)
    return {"tmp": tmp, "store": store, "saes": saes, "ft": ft, "case": case}


@pytest.mark.slow
def test_streamed_sae_equals_the_feature_table_and_candidates_reproduce_across_seeds(study):
    common = dict(n_permutations=100, n_boot=100, n_stability=10, heldout=None, progress=False)
    from_table = bv.associate(study["ft"], ["dx"], probes=False, **common)
    streamed = bv.associate(labels=["dx"], sae=study["saes"][0], seeds=[study["saes"][1]], probes=True,
                            row_labels=["region"], **common)
    a = from_table.table.set_index(["feature", "test"])
    b = streamed.table.set_index(["feature", "test"])
    np.testing.assert_allclose(b.loc[a.index, "p"], a["p"], rtol=1e-6)
    assert len(streamed.candidates) > 0
    seeds = streamed.seeds
    assert len(seeds) == len(streamed.table[streamed.table.primary & (streamed.table.q < 0.05)])
    assert seeds["cosine"].between(-1, 1).all() and seeds["reproduced"].any()
    assert (streamed.candidates["n_seeds"] == 1).all()
    probes = streamed.probes
    subj = probes[(probes.level == "subject") & (probes.metric == "auroc")].set_index("probe")
    assert {"raw activations", "SAE features"} <= set(subj.index)
    assert subj.loc["raw activations", "value"] > 0.8  # the case shift is plain in the raw layer
    rows = probes[(probes.level == "row") & (probes.label == "region") & (probes.metric == "auroc")]
    assert set(rows["probe"]) >= {"raw activations", "SAE features"} and rows["value"].max() > 0.8


def test_rank_rows_refuses_a_subject_label_and_ranks_a_row_label(study):
    ft = study["ft"]
    with pytest.raises(bv.InputError, match="subject-level"):
        bv.rank_rows(ft, "dx", progress=False)
    ranked = bv.rank_rows(ft, "region", progress=False)
    assert set(ranked["group"].astype(str)) == {"0", "1"} and (ranked["evidence"] == "row-level").all()
    pseudo = bv.rank_rows(ft, "dx", pseudo_replicated=True, progress=False)
    assert pseudo.attrs["pseudo_replicated"] and (pseudo["evidence"] == "row-level (pseudo-replicated)").all()


def test_cli_associate_from_a_config_writes_findings(study, tmp_path, capsys):
    from bioviz.cli import main

    clinical = pd.DataFrame({"subject_id": [f"P{s:02d}" for s in range(N_SUBJECTS)],
                             "age": np.linspace(30, 80, N_SUBJECTS)})
    clinical.to_csv(tmp_path / "clinical.csv", index=False)
    cfg = tmp_path / "associate.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        features: {study['tmp'] / 'features.h5ad'}
        labels:
          - column: dx
            kind: binary
            case: case
        clinical: {tmp_path / 'clinical.csv'}
        covariates: [age]
        n_permutations: 50
        n_boot: 50
        n_stability: 5
        heldout: 0
        probes: false
        progress: false
        out: {tmp_path / 'findings'}
        """))
    assert main(["associate", "--config", str(cfg)]) == 0
    printed = capsys.readouterr().out
    assert "Findings at" in printed and "candidates" in printed
    back = bv.Findings.read(tmp_path / "findings")
    assert back.manifest["inputs"]["clinical"]["checksum"]
    assert set(back.table["test"]) == {"mann_whitney", "linear"}
    assert (back.table.loc[back.table.primary, "test"] == "linear").all()
    assert main(["associate", "--config", str(cfg)]) == 1  # exists: refused, not replaced
    assert "overwrite" in capsys.readouterr().err


def test_the_example_config_parses_into_associate_arguments(capsys):
    from pathlib import Path

    from bioviz.cli import main

    cfg = Path(__file__).resolve().parents[1] / "experiments" / "associate_example.yaml"
    with pytest.raises(SystemExit) as exit_:
        main(["associate", "--config", str(cfg), "--print_config"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert "os_months" in printed and "covariates:" in printed
