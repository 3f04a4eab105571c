import json

import anndata as ad
import pandas as pd
import pytest

from bioviz.demo import run


@pytest.mark.slow
def test_demo_runs_end_to_end_on_embedded_data(tmp_path):
    summary = run(str(tmp_path / "demo"), steps=40, cells=96, progress=False)
    assert summary["cells"] == 96 and summary["rows"] > 96 * 20  # gene-token rows
    assert 0 < summary["fvu"] < 1 and -1 < summary["kl_recovered"] <= 1
    ft = ad.read_h5ad(tmp_path / "demo" / "features.h5ad")
    assert ft.n_obs == summary["rows"] and ft.n_vars == summary["features"]
    assert {"subject_id", "sample_id", "bulk_labels"} <= set(ft.obs.columns)
    markers = pd.read_csv(tmp_path / "demo" / "cell_type_features.tsv", sep="\t")
    assert set(markers["cell_type"]) == set(ft.obs["bulk_labels"].astype(str))
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["rows"] == summary["rows"]
