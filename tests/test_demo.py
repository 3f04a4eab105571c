import json
import warnings

import anndata as ad
import pandas as pd
import pytest

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
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cells"] == 96 and summary["rows"] > 96 * 20  # gene-token rows
    assert summary["k"] == 8 and summary["features"] == 4 * summary["d_in"]
    assert 0 < summary["fvu"] < 1 and -1 < summary["kl_recovered"] <= 1
    ft = ad.read_h5ad(out / "features.h5ad")
    assert ft.n_obs == summary["rows"] and ft.n_vars == summary["features"]
    assert {"subject_id", "sample_id", "bulk_labels"} <= set(ft.obs.columns)
    markers = pd.read_csv(out / "cell_type_features.tsv", sep="\t")
    assert set(markers["cell_type"]) == set(ft.obs["bulk_labels"].astype(str))
    # only the demo's own lines: no Lightning info, tips, warnings or third-party bars
    printed = capfd.readouterr()
    lines = [line for line in (printed.out + printed.err).splitlines() if line.strip()]
    assert [line for line in lines if not line.startswith(OWN_LINES)] == []
    assert lines[0].startswith("cohort: ") and lines[-1].startswith("done in ")
    # warnings a user would see (Python hides deprecations raised outside __main__)
    shown = [f"{w.category.__name__}: {w.message}" for w in caught
             if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    assert shown == []
