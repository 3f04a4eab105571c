import json
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import bioviz as bv
from bioviz.cli import main

# what the demo itself prints (progress bars off); anything else is noise for a newcomer
OWN_LINES = ("cohort: ", "extracted: ", "feature table: ", "SAE: FVU ", "features most specific",
             "  ", "done in ")


@pytest.mark.slow
def test_demo_runs_end_to_end_on_embedded_data(tmp_path, capfd):
    out = tmp_path / "demo"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["demo", "--out", str(out), "--steps", "40", "--cells", "96", "--k", "8",
                     "--expansion_factor", "4", "--progress", "false"]) == 0
    printed = capfd.readouterr()  # the demo's own output, before the checks below load anything
    summary = json.loads((out / "summary.json").read_text())
    # case 17: values checked against references computed here, ranges that a broken run leaves
    assert summary["cells"] == 96 and summary["rows"] == _gene_tokens(96)
    assert summary["k"] == 8 and summary["features"] == 4 * summary["d_in"]
    assert summary["fvu"] == pytest.approx(_fvu(out), rel=1e-4)
    assert summary["fvu"] < 0.8  # 40 steps explain a good part of the variance (0.63 seen)
    fid = _fidelity(out, 96)
    assert summary["kl_recovered"] == pytest.approx(fid["kl_recovered"], rel=1e-4)
    assert summary["top1_agreement"] == pytest.approx(fid["top1_agreement_sae"], rel=1e-4)
    assert 0.25 < summary["kl_recovered"] <= 1  # well above mean ablation (0.53 seen)
    ft = ad.read_h5ad(out / "features.h5ad")
    assert ft.n_obs == summary["rows"] and ft.n_vars == summary["features"]
    assert summary["dead_fraction"] == pytest.approx(float(np.mean(ft.X.getnnz(axis=0) == 0)))
    assert {"subject_id", "sample_id", "bulk_labels"} <= set(ft.obs.columns)
    markers = pd.read_csv(out / "cell_type_features.tsv", sep="\t")
    assert set(markers["cell_type"]) == set(ft.obs["bulk_labels"].astype(str))
    # only the demo's own lines: no Lightning info, tips, warnings or third-party bars
    lines = [line for line in (printed.out + printed.err).splitlines() if line.strip()]
    assert [line for line in lines if not line.startswith(OWN_LINES)] == []
    assert lines[0].startswith("cohort: ") and lines[-1].startswith("done in ")
    # warnings a user would see (Python hides deprecations raised outside __main__)
    shown = [f"{w.category.__name__}: {w.message}" for w in caught
             if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    assert shown == []


def _gene_tokens(cells: int) -> int:
    """Gene-token rows the demo should give, counted from the data and the shipped model's
    files: per cell, its expressed genes that the model knows, at most the context less
    Geneformer V2's <cls> and <eos>."""
    from bioviz.adapters.singlecell import pbmc68k_counts
    from bioviz.adapters.singlecell.demo import DEMO_DIR

    known = json.loads((DEMO_DIR / "gene_median_dictionary.json").read_text())
    tokens = json.loads((DEMO_DIR / "token_dictionary.json").read_text())
    assert {"<cls>", "<eos>"} <= set(tokens)  # V2: two specials in every sequence
    context = json.loads((DEMO_DIR / "config.json").read_text())["max_position_embeddings"]
    adata = pbmc68k_counts()[:cells]
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    expressed = (x[:, np.isin(adata.var_names, list(known))] > 0).sum(1)
    return int(np.minimum(expressed, context - 2).sum())


def _fvu(out) -> float:
    """FVU of the saved SAE on the store's first 20000 rows (as the demo scores it), with the
    reconstruction decoded and the ratio summed in float64 here."""
    sae = bv.load_sae(out / "sae" / "topk")
    x = np.asarray(bv.ActivationStore(out / "store").array()[:20000], dtype=np.float64)
    with torch.no_grad():
        codes = sae.encode(torch.from_numpy(x).float()).double().numpy()
    w, b = sae.W_dec.detach().double().numpy(), sae.b_dec.detach().double().numpy()
    x_hat = (codes @ w + b) / float(sae.norm_scale)
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def _fidelity(out, cells: int):
    """The saved SAE spliced into the demo model again, on the cells the demo scores."""
    from bioviz.adapters.singlecell import demo_adapter, pbmc68k_counts

    sae = bv.load_sae(out / "sae" / "topk")
    return bv.fidelity(demo_adapter(rows="gene"), pbmc68k_counts()[:cells], sae, batch_size=32, progress=False)
