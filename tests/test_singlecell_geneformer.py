"""Geneformer-style adapter: rank-value tokenisation, checks, extraction from AnnData and backed h5ad."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import bioviz
from bioviz.adapters.singlecell.demo import pbmc68k_counts
from bioviz.adapters.singlecell.geneformer import (
    GeneformerAdapter,
    finish_sequence,
    rank_value_encode,
)

SPECIAL = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}


def make_model(path, vocab_size, *, layers=2, width=32, context=512):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * width, max_position_embeddings=context, hidden_act="relu", pad_token_id=0)
    BertForMaskedLM(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pbmc():
    return pbmc68k_counts()


@pytest.fixture(scope="module")
def gf_dir(tmp_path_factory, pbmc):
    """A V2-style model directory with Geneformer-format (pickle) dictionaries."""
    d = tmp_path_factory.mktemp("gf")
    genes = list(pbmc.var_names)
    tokens = {**SPECIAL, **{g: i + 4 for i, g in enumerate(genes)}}
    x = pbmc.X.toarray() / pbmc.obs["n_counts"].to_numpy()[:, None] * 10_000
    medians = {g: np.float64(np.median(x[:, j][x[:, j] > 0])) for j, g in enumerate(genes)}
    with open(d / "token_dictionary.pkl", "wb") as f:
        pickle.dump(tokens, f)
    with open(d / "gene_median_dictionary.pkl", "wb") as f:
        pickle.dump(medians, f)  # numpy float64 values, as Geneformer's own files hold
    make_model(d, len(tokens))
    return d


# -- tokenisation fidelity --------------------------------------------------------------------


def test_rank_value_encoding_hand_worked():
    # genes A B C D, counts 10 0 5 5, cell total 20, medians 2, 1, 0.5, 1.25:
    # x / 20 * 10000 / median = A 2500, B 0, C 5000, D 2000 → C, A, D
    tokens = np.array([4, 5, 6, 7])
    ranked = rank_value_encode(np.array([10.0, 0, 5, 5]), tokens, 20.0, np.array([2.0, 1.0, 0.5, 1.25]))
    assert ranked.tolist() == [6, 4, 7]
    # V2: <cls> + the top (context - 2) genes + <eos>; V1: the top `context` genes, no specials
    assert finish_sequence(ranked, "V2", 4, cls_id=2, eos_id=3).tolist() == [2, 6, 4, 3]
    assert finish_sequence(ranked, "V1", 2).tolist() == [6, 4]


def reference_geneformer_v2(counts: sp.csr_matrix, n_counts, var_ids, token_dict, median_dict, context,
                            special_token=True):
    """Independent re-implementation of Geneformer's TranscriptomeTokenizer.tokenize_anndata +
    create_dataset (V2, special_token=True; V1: special_token=False, the top ``context``
    genes), written from its published code."""
    coding_loc = np.where([g in token_dict and g not in SPECIAL for g in var_ids])[0]
    norm_factor_vector = np.array([median_dict[var_ids[i]] for i in coding_loc])
    coding_tokens = np.array([token_dict[var_ids[i]] for i in coding_loc])
    x_view = counts[:, coding_loc]
    x_norm = sp.csr_matrix(x_view / n_counts[:, None] * 10_000 / norm_factor_vector)
    out = []
    for i in range(x_norm.shape[0]):
        row = x_norm[i]
        ranked = coding_tokens[row.indices][np.argsort(-row.data)]
        if not special_token:
            out.append(ranked[:context].tolist())
            continue
        ranked = ranked[: context - 2]
        out.append([token_dict["<cls>"], *ranked.tolist(), token_dict["<eos>"]])
    return out


def test_matches_independent_reimplementation_on_pbmc68k(gf_dir, pbmc):
    ada = GeneformerAdapter(gf_dir, subject_key="donor", sample_key="library")
    cells = ada.dataset(pbmc)
    batch = ada.collate([cells[i] for i in range(len(cells))])
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    ours = [ids[i, : int(mask[i].sum())].tolist() for i in range(len(ids))]
    with open(gf_dir / "token_dictionary.pkl", "rb") as f:
        token_dict = pickle.load(f)
    with open(gf_dir / "gene_median_dictionary.pkl", "rb") as f:
        median_dict = pickle.load(f)
    ref = reference_geneformer_v2(pbmc.X.astype(np.float64), pbmc.obs["n_counts"].to_numpy(np.float64),
                                  list(pbmc.var_names), token_dict, median_dict, context=512)
    assert ada.version == "V2" and ada.context == 512
    assert len(ours) == len(ref) == pbmc.n_obs
    assert ours == ref
    # the gene index carried for obs matches the token at each position
    g = batch.extra["gene"][0]
    genes = np.asarray(ada.genes.genes)[g[g >= 0].numpy()]
    assert [token_dict[k] for k in genes] == ours[0][1:-1]


def test_case17_v1_dictionary_gives_the_top_genes_without_specials_and_mean_pooling(tmp_path, pbmc):
    genes = list(pbmc.var_names)[:400]
    tokens = {"<pad>": 0, "<mask>": 1, **{g: i + 2 for i, g in enumerate(genes)}}
    (tmp_path / "token_dictionary.json").write_text(json.dumps(tokens))
    (tmp_path / "gene_median_dictionary.json").write_text(json.dumps({g: 1.0 for g in genes}))
    make_model(tmp_path, len(tokens), context=64)
    ada = GeneformerAdapter(tmp_path, min_mapped_fraction=0.5, subject_key="donor")
    assert ada.version == "V1" and ada.pooling == "mean" and ada.context == 64
    sub = pbmc[:20]
    cells = ada.dataset(sub)
    batch = ada.collate([cells[i] for i in range(len(cells))])
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    ours = [ids[i, : int(mask[i].sum())].tolist() for i in range(len(ids))]
    # case 17: V1 sequences are the top 64 genes by rank value, no <cls>/<eos> (the old check
    # here was `... or version == "V1"`, true whatever the tokens)
    ref = reference_geneformer_v2(sub.X.astype(np.float64), sub.obs["n_counts"].to_numpy(np.float64),
                                  list(sub.var_names), tokens, {g: 1.0 for g in genes}, context=64,
                                  special_token=False)
    assert ours == ref
    assert max(len(r) for r in ref) == 64  # cells longer than the context are cut to it
    assert (batch.extra["gene"][batch.inputs["attention_mask"].bool()] >= 0).all()  # every real token is a gene
    with pytest.raises(ValueError, match="no <cls> token"):
        GeneformerAdapter(tmp_path, pooling="cls")
    with pytest.raises(ValueError, match="V2 needs|needs <cls> and <eos>"):
        GeneformerAdapter(tmp_path, version="V2")


# -- extraction ------------------------------------------------------------------------------


def test_extract_backed_h5ad_rows_match_the_model(tmp_path, gf_dir, pbmc):
    path = tmp_path / "cohort.h5ad"
    sub = pbmc[:48].copy()
    sub.write_h5ad(path)
    ada = GeneformerAdapter(gf_dir, subject_key="donor", sample_key="library", obs_columns=["bulk_labels"],
                            rows="both")
    store = bioviz.extract(ada, str(path), "bert.encoder.layer.1", tmp_path / "store", batch_size=16, progress=False)
    obs = store.obs
    n_tokens = int((pbmc.X[:48] > 0).sum())  # every expressed gene is in the dictionary, none truncated
    assert store.n_rows == 48 + n_tokens
    assert (obs["row_type"] == "cell").sum() == 48
    assert {"subject_id", "sample_id", "cell_id", "gene_id", "gene", "token_index", "bulk_labels"} <= set(obs.columns)
    assert set(obs["sample_id"]) == set(sub.obs["library"])
    genes = obs[obs["row_type"] == "gene"]
    assert (genes["gene_id"] == genes["gene"]).all()  # symbols are both the data's and the model's ids
    assert genes["token_index"].min() == 1  # position 0 is <cls>

    # a cell's rows equal the hooked layer run directly on that cell's tokens
    cell = sub.obs_names[5]
    ids = torch.tensor([[2] + [int(ada.token_dict[g]) for g in genes[genes.cell_id == cell]
                               .sort_values("token_index")["gene_id"]] + [3]])
    with torch.no_grad(), bioviz.capture(ada.model, "bert.encoder.layer.1") as cap:
        ada.model.bert(input_ids=ids, attention_mask=torch.ones_like(ids))
        direct = cap.pop()["bert.encoder.layer.1"][0]
    rows = store.array()[:]
    cls_row = rows[np.flatnonzero((obs.cell_id == cell) & (obs.row_type == "cell"))[0]]
    gene_rows = rows[np.flatnonzero((obs.cell_id == cell) & (obs.row_type == "gene"))]
    np.testing.assert_allclose(cls_row, direct[0].numpy(), atol=2e-5)
    np.testing.assert_allclose(gene_rows, direct[1:-1].numpy(), atol=2e-5)


def test_log1p_input_is_refused_then_accepted_with_expm1(gf_dir):
    import scanpy as sc

    raw = sc.datasets.pbmc68k_reduced().raw.to_adata()  # log1p of normalised counts
    ada = GeneformerAdapter(gf_dir)
    with pytest.raises(ValueError, match="log-normalised.*expression='log1p'"):
        ada.dataset(raw)
    ada = GeneformerAdapter(gf_dir, expression="log1p")
    cells = ada.dataset(raw[:30].copy())
    assert ada.report["expression_looks"] == "log-normalised" and len(cells) == 30
    batch = ada.collate([cells[i] for i in range(len(cells))])
    assert int(batch.inputs["attention_mask"][0].sum()) == int((raw.X[0] > 0).sum()) + 2


def test_input_checks_name_the_problem(gf_dir, pbmc):
    ada = GeneformerAdapter(gf_dir)
    scaled = pbmc[:20].copy()
    scaled.X = sp.csr_matrix(scaled.X.toarray() - 1.0)
    with pytest.raises(ValueError, match="scaled"):
        ada.dataset(scaled)
    dup = pbmc[:20].copy()
    dup.obs_names = ["c1"] * 20
    with pytest.raises(ValueError, match="cell names occur more than once"):
        ada.dataset(dup)
    dupg = pbmc[:20].copy()
    dupg.var_names = [dupg.var_names[0]] * 2 + list(dupg.var_names[2:])
    with pytest.raises(ValueError, match="gene identifiers occur more than once"):
        ada.dataset(dupg)
    ens = pbmc[:20].copy()
    ens.var_names = [f"ENSG{i:011d}" for i in range(ens.n_vars)]
    with pytest.raises(ValueError, match=r"only 0 of 765 genes .*gene_map"):
        ada.dataset(ens)
    # a mapping table from the cohort's identifiers to the model's fixes it
    table = pd.DataFrame({"ensembl": ens.var_names, "symbol": pbmc.var_names})
    mapped = GeneformerAdapter(gf_dir, gene_map=table)
    assert len(mapped.dataset(ens)) == 20 and mapped.report["n_unmapped"] == 0
    empty = pbmc[:20].copy()
    x = empty.X.toarray()
    x[3] = 0
    empty.X = sp.csr_matrix(x)
    empty.obs["n_counts"] = x.sum(1)
    with pytest.raises(ValueError, match="1 cells have no expressed gene"):
        ada.dataset(empty)
    dropping = GeneformerAdapter(gf_dir, empty_cells="drop")
    assert len(dropping.dataset(empty)) == 19 and dropping.report["n_empty_cells_dropped"] == 1
    low = pbmc[:20].copy()
    low.obs["n_counts"] = low.obs["n_counts"] / 2
    with pytest.raises(ValueError, match=r"obs\['n_counts'\] is below"):
        ada.dataset(low)
    with pytest.raises(ValueError, match="obs has no column 'patient'"):
        GeneformerAdapter(gf_dir, subject_key="patient").dataset(pbmc[:5].copy())


def test_loader_errors_name_the_file(tmp_path, gf_dir):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        GeneformerAdapter(tmp_path, token_dictionary=gf_dir / "token_dictionary.pkl",
                          gene_median=gf_dir / "gene_median_dictionary.pkl")
    big = {**SPECIAL, "GENE": 10_000}
    (tmp_path / "tok.json").write_text(json.dumps(big))
    (tmp_path / "med.json").write_text(json.dumps({"GENE": 1.0}))
    with pytest.raises(ValueError, match="does not belong to this model"):
        GeneformerAdapter(gf_dir, token_dictionary=tmp_path / "tok.json", gene_median=tmp_path / "med.json")


def test_pickled_dictionaries_cannot_run_code(tmp_path):
    import os

    from bioviz.adapters.singlecell.dicts import load_mapping

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"ENSG1": Payload()}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        load_mapping(tmp_path / "evil.pkl", what="token_dictionary")
    assert not (tmp_path / "pwned").exists()
    pd.DataFrame({"a": ["X", "Y"], "b": [1, 2]}).to_csv(tmp_path / "m.tsv", sep="\t", index=False)
    assert load_mapping(tmp_path / "m.tsv", what="t", value_type=int) == {"X": 1, "Y": 2}
