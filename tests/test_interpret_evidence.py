"""interpret end to end on gene-token rows: a planted interferon feature found by associate is
explained by its genes, its enrichment and its association, and written as a folder."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import bioviz as bv
from bioviz.interpret.evidence import interpret
from bioviz.interpret.genesets import immune_gmt, read_gmt


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """Gene-token rows: 24 subjects × 6 cells × 40 gene tokens. Feature f0 fires on
    interferon genes, more in case subjects; f1..f7 fire at random."""
    rng = np.random.default_rng(0)
    sets = read_gmt(immune_gmt())
    ifn = list(sets["IFN_TYPE_I_RESPONSE"].genes)
    others = sorted({g for s in sets.values() for g in s.genes} - set(ifn))
    genes = np.array(ifn + others)
    rows, X = [], []
    for s in range(24):
        case = s % 2 == 1
        for c in range(6):
            for g in rng.choice(len(genes), 40, replace=False):
                code = rng.exponential(0.3, 8) * (rng.random(8) < 0.2)
                if genes[g] in ifn:
                    code[0] = rng.exponential(1.0) + (1.5 if case else 0.2)
                X.append(code)
                rows.append({"subject_id": f"S{s:02d}", "sample_id": f"S{s:02d}", "cell_id": f"S{s:02d}_c{c}",
                             "gene": genes[g], "diagnosis": "case" if case else "control"})
    ft = ad.AnnData(sp.csr_matrix(np.asarray(X, np.float32)), obs=pd.DataFrame(rows),
                    var=pd.DataFrame(index=[f"f{j}" for j in range(8)]))
    ft.obs_names = ft.obs_names.astype(str)
    tmp = tmp_path_factory.mktemp("tokens")
    ft.write_h5ad(tmp / "features.h5ad")
    findings = bv.associate(str(tmp / "features.h5ad"), ["diagnosis"], n_permutations=0, n_boot=0,
                            n_stability=0, heldout=None, probes=False, out=str(tmp / "findings"), progress=False)
    return {"tmp": tmp, "ft": ft, "findings": findings, "ifn": set(ifn)}


def test_a_planted_interferon_feature_is_explained_and_written(tokens):
    assert tokens["findings"].candidates.iloc[0]["feature"] == "f0"
    result = interpret(tokens["tmp"] / "findings", top=3, progress=False)
    row = result.features.set_index("feature").loc["f0"]
    assert "IFN_TYPE_I_RESPONSE" in row["description"] and "higher in case than control" in row["description"]
    top = result.tables["top_genes"]
    assert set(top[top.feature == "f0"]["gene"].head(10)) <= tokens["ifn"]
    enr = result.tables["enrichment"]
    assert enr[enr.feature == "f0"].sort_values("q").iloc[0]["set"] == "IFN_TYPE_I_RESPONSE"
    # every source the description names is a cell of a table that was written
    for table, r, column in json.loads(row["sources"]):
        if table != "association":  # the candidates table, written by the Findings
            t = result.tables[table]
            assert column in t.columns and r in t.index.astype(str)
    out = tokens["tmp"] / "interpretation"
    assert result.path == out and (out / "features.parquet").exists()
    back = pd.read_parquet(out / "features.parquet")
    assert back.set_index("feature").loc["f0", "description"] == row["description"]
    for fig in ("histogram", "top_genes", "enrichment"):
        assert (out / "features" / "f0" / f"{fig}.png").stat().st_size > 0, fig
        assert (out / "features" / "f0" / f"{fig}.svg").read_text().count("IFN") >= (fig == "enrichment")
    manifest = json.loads((out / "interpretation.json").read_text())
    assert "interventions" in manifest["skipped"]  # no model given: said, not silently empty


def test_an_existing_interpretation_is_not_replaced_unasked(tokens):
    interpret(tokens["findings"], tokens["ft"], top=1, out=str(tokens["tmp"] / "again"), progress=False)
    with pytest.raises(bv.InputError, match="overwrite=True"):
        interpret(tokens["findings"], tokens["ft"], top=1, out=str(tokens["tmp"] / "again"), progress=False)
    (tokens["tmp"] / "mine").mkdir()
    with pytest.raises(bv.InputError, match="not an interpretation"):
        interpret(tokens["findings"], tokens["ft"], top=1, out=str(tokens["tmp"] / "mine"), progress=False)


def test_cli_interpret_from_a_config(tokens, capsys):
    from bioviz.cli import main

    cfg = tokens["tmp"] / "interpret.yaml"
    out = tokens["tmp"] / "cli_interpretation"
    cfg.write_text(f"findings: {tokens['tmp'] / 'findings'}\ntop: 2\nn_permutations: 50\n"
                   f"progress: false\nout: {out}\n")
    assert main(["interpret", "--config", str(cfg)]) == 0
    printed = capsys.readouterr().out
    assert "f0: " in printed and "IFN_TYPE_I_RESPONSE" in printed and "skipped input_space" in printed
    want = tokens["findings"].candidates.drop_duplicates("feature").head(2)["feature"].tolist()
    assert pd.read_parquet(out / "features.parquet")["feature"].tolist() == want
    # a second run without overwrite is refused before any work, with the message alone
    assert main(["interpret", "--config", str(cfg)]) == 1
    assert "overwrite=True" in capsys.readouterr().err


def test_candidates_named_and_refused(tokens, tmp_path):
    ft = tokens["ft"].copy()
    # a cell-level column: f0 fires in every cell type alike, so it is not called specific
    ft.obs["ctype"] = np.where(ft.obs["cell_id"].str[-1].astype(int) % 2 == 0, "A", "B")
    result = interpret(tokens["findings"], ft, candidates=["f3", "f0"], groupby="ctype", out=tmp_path / "i",
                       progress=False)
    types = result.tables["cell_types"]
    assert set(types["group"]) == {"A", "B"} and set(types["feature"]) == {"f0", "f3"}
    assert "specific to" not in result.features.set_index("feature").loc["f0", "description"]
    assert list(result.features["feature"]) == ["f3", "f0"]
    with pytest.raises(bv.InputError, match=r"f9 are not in the FeatureTable.*another SAE"):
        interpret(tokens["findings"], tokens["ft"], candidates=["f0", "f9"], out=tmp_path / "j", progress=False)
    assert not (tmp_path / "j").exists()
    # the preranked test runs over every gene, and the gene sets' coverage is counted
    pre = result.tables["enrichment_preranked"]
    assert pre[pre.feature == "f0"].sort_values("p").iloc[0]["set"] == "IFN_TYPE_I_RESPONSE"
    cover = result.tables["gene_sets"]
    assert (cover["n_genes"] == cover["n_in_universe"] + cover["n_unknown"]).all()


def test_a_feature_that_never_fires_is_said_so(tokens, tmp_path):
    ft = tokens["ft"].copy()
    X = ft.X.tolil()
    X[:, 5] = 0
    ft.X = sp.csr_matrix(X)
    with pytest.warns(UserWarning, match="f5 never fires"):
        result = interpret(tokens["findings"], ft, candidates=["f5"], out=tmp_path / "i", progress=False)
    assert "never fires" in result.features.set_index("feature").loc["f5", "description"]


def test_the_adapter_gets_the_reference_level_the_findings_compared_against(tmp_path):
    """A study coded AD/CN with case: AD (sorting alone would make CN the case): the adapter
    is told CN is the reference, so its lesion-free baseline is the controls."""
    from torch import nn

    from bioviz.adapters import TorchAdapter

    class Recording(TorchAdapter):
        def evidence(self, table, features, **kw):
            self.seen = {k: kw[k] for k in ("label", "reference")}
            return {}, {}

    rng = np.random.default_rng(1)
    obs = pd.DataFrame({"subject_id": np.repeat([f"S{s}" for s in range(16)], 10)})
    obs["sample_id"] = obs["subject_id"]
    obs["dx"] = np.where(obs["subject_id"].str[1:].astype(int) % 2 == 0, "AD", "CN")
    X = rng.exponential(1, (160, 3)) * (rng.random((160, 3)) < 0.5)
    X[:, 0] += (obs["dx"] == "AD").to_numpy() * 2
    ft = ad.AnnData(sp.csr_matrix(X.astype(np.float32)), obs=obs, var=pd.DataFrame(index=["f0", "f1", "f2"]))
    ft.obs_names = ft.obs_names.astype(str)
    findings = bv.associate(ft, [{"column": "dx", "kind": "binary", "case": "AD"}], n_permutations=0, n_boot=0,
                            n_stability=0, heldout=None, probes=False, progress=False)
    adapter = Recording(nn.Linear(2, 2))
    interpret(findings, ft, candidates=["f0"], adapter=adapter, out=tmp_path / "i", progress=False)
    assert adapter.seen == {"label": "dx", "reference": "CN"}
