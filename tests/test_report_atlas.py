"""The feature atlas: every feature of the dictionary listed, its numbers checked against the
raw codes, hostile names shown only as text, nothing fetched, no original identifier left."""

import base64
import json
import re
import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import bioviz as bv
from bioviz.errors import InputError
from bioviz.report import Pseudonyms, find_identifiers, references, write_data
from bioviz.report.atlas import MIN_TOKENS, N_BINS, TOP_GENES, atlas_html
from bioviz.report.content import RUO
from bioviz.report.templates import environment

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
PLANTED = {"CD14": 3.0, "LYZ": 2.6, "S100A8": 2.2, "FCN1": 1.8, "VCAN": 1.4}  # f1's genes, by strength
D = 10  # features; f9 never fires


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Gene-token rows: 16 subjects × 5 cells × 24 of 40 genes. f0 fires more in cases, f1 on
    the PLANTED genes, f2 on a gene named like a script tag; cell and sample ids embed the
    subject id; a label and an obs column are named like markup."""
    rng = np.random.default_rng(0)
    genes = np.array(list(PLANTED) + [SCRIPT, "MS4A1"] + [f"GENE{i:02d}" for i in range(33)])
    subjects = [f"MRN-{40017 + 13 * s}" for s in range(16)]
    rows, X = [], []
    for s, sid in enumerate(subjects):
        case = s % 2 == 1
        for c in range(5):
            for g in rng.choice(len(genes), 24, replace=False):
                code = rng.exponential(0.3, D) * (rng.random(D) < 0.2)
                code[0] += rng.exponential(0.5) + (1.2 if case else 0.0)
                code[1] = PLANTED.get(genes[g], 0.0) + rng.exponential(0.05) * (rng.random() < 0.3)
                code[2] = 2.0 + rng.exponential(0.1) if genes[g] in (SCRIPT, "MS4A1") else code[2]
                code[D - 1] = 0.0
                X.append(code)
                rows.append({"subject_id": sid, "sample_id": f"{sid}-PBMC", "cell_id": f"{sid}_c{c}",
                             "gene": genes[g], "diagnosis": "case" if case else "control",
                             IMG: "case" if case else "control", SCRIPT: IMG if s % 4 else "ok",
                             "patient_name": f"Patient Number{s:02d}"})
    obs = pd.DataFrame(rows)
    obs.index = [f"{r['cell_id']}_t{i}" for i, r in enumerate(rows)]
    ft = ad.AnnData(sp.csr_matrix(np.asarray(X, np.float32)), obs=obs.drop(columns=[SCRIPT]),
                    var=pd.DataFrame(index=[f"f{j}" for j in range(D)]))
    tmp = tmp_path_factory.mktemp("atlas")
    ft.write_h5ad(tmp / "features.h5ad")  # (h5 keys may not hold "/": that column joins in memory)
    ft.obs[SCRIPT] = obs[SCRIPT].to_numpy()
    findings = bv.associate(str(tmp / "features.h5ad"), ["diagnosis", IMG], n_permutations=0, n_boot=0,
                            n_stability=0, heldout=None, probes=False, out=str(tmp / "findings"), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the shipped immune gene sets barely cover 40 genes
        interp = bv.interpret(tmp / "findings", top=3, progress=False)
    pseudonyms = Pseudonyms(seed=3)
    html, table = atlas_html(ft, findings, interp, pseudonyms, env=environment(), title="Study atlas",
                             generated="2025-01-01", version="0.test", identifying=["patient_name"])
    return {"tmp": tmp, "ft": ft, "findings": findings, "interp": interp, "pseudonyms": pseudonyms,
            "html": html, "table": table, "data": _data(html), "subjects": subjects}


def _data(html: str) -> dict:
    """The page's JSON block, parsed; it must be the whole script element's text."""
    m = re.search(r'<script type="application/json" id="atlas-data">(.*?)</script>', html, re.S)
    assert m is not None
    return json.loads(m.group(1))


def _dense(ft) -> np.ndarray:
    return np.asarray(ft.X.todense(), dtype=np.float64)


def test_every_feature_of_the_dictionary_is_listed_with_its_numbers(cohort):
    ft, table, data = cohort["ft"], cohort["table"], cohort["data"]
    X = _dense(ft)
    assert len(table) == len(data["features"]) == D  # d_sae, f9 (never fires) included
    assert table["feature"].tolist() == [f["n"] for f in data["features"]] == list(ft.var_names)
    np.testing.assert_allclose(table["density"], (X > 0).mean(0))
    np.testing.assert_allclose(table["mean_activation"], X.mean(0), rtol=1e-6)
    np.testing.assert_allclose(table["max_activation"], X.max(0), rtol=1e-6)
    assert table.set_index("feature").loc["f9", "density"] == 0
    for j, f in enumerate(data["features"]):  # the histogram counts every firing row, in its bin
        fired = X[X[:, j] > 0, j]
        want = np.histogram(fired, bins=N_BINS, range=(0, fired.max()))[0] if len(fired) else np.zeros(N_BINS)
        assert f["h"] == want.tolist(), f["n"]
    # candidates and associations are the Findings' own
    best = cohort["findings"].candidates.sort_values("rank").drop_duplicates("feature").set_index("feature")
    ranks = table.set_index("feature")["candidate_rank"]
    assert ranks.dropna().astype(int).to_dict() == best["rank"].astype(int).to_dict()
    assert ranks.notna().sum() >= 1 and best.index[0] == "f0"
    prim = cohort["findings"].table.query("primary and label == 'diagnosis'").set_index("feature")
    np.testing.assert_allclose(table.set_index("feature").loc[prim.index, "q_diagnosis"], prim["q"])
    desc = cohort["interp"].features.set_index("feature")["description"]
    assert table.set_index("feature").loc[desc.index, "description"].tolist() == desc.tolist()
    assert RUO in cohort["html"] and "Study atlas" in cohort["html"]


def test_top_genes_are_the_planted_genes(cohort):
    ft, table = cohort["ft"], cohort["table"]
    X, genes = _dense(ft), ft.obs["gene"].to_numpy()
    names, counts = np.unique(genes, return_counts=True)
    names = names[counts >= MIN_TOKENS]
    for j, f in enumerate(ft.var_names):  # the reference: mean per gene over its rows, zeros included
        means = np.array([X[genes == g, j].mean() for g in names])
        order = sorted((i for i in range(len(names)) if means[i] > 0), key=lambda i: (-means[i], names[i]))
        want = [names[i] for i in order[:TOP_GENES]]
        got = [g for g in table.set_index("feature").loc[f, "top_genes"].split(", ") if g]
        assert got == want, f
    assert table.set_index("feature").loc["f1", "top_genes"].split(", ") == list(PLANTED)
    assert table.set_index("feature").loc["f9", "top_genes"] == ""


def test_hostile_names_are_text_only(cohort):
    html, data = cohort["html"], cohort["data"]
    # present in the data (so the check below is not passed by leaving them out) ...
    assert IMG in data["labels"] and SCRIPT in data["rows"]["columns"]
    assert SCRIPT in [g for g, _ in data["features"][2]["g"]]
    assert any(IMG in row for row in data["rows"]["values"])
    # ... and nowhere in the page as markup
    assert "<script>alert" not in html and "<img src=x" not in html
    block = re.search(r'id="atlas-data">(.*?)</script>', html, re.S).group(1)
    assert "<" not in block and ">" not in block  # nothing in it can end the script element
    assert html.count("</script>") == 2  # the data block and the page's own script
    js = html[html.rindex("<script>"):]
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "document.write" not in js


def test_the_page_fetches_nothing_and_inlines_the_figures(cohort, tmp_path):
    html, data = cohort["html"], cohort["data"]
    refs = references(html)
    assert set(refs["kind"]) <= {"anchor", "inline"}, refs
    path = tmp_path / "atlas.html"
    path.write_text(html, encoding="utf-8")
    assert set(references(path)["kind"]) <= {"anchor", "inline"}
    figs = {f["n"]: f["fig"] for f in data["features"] if f["fig"]}
    assert set(figs) == set(cohort["interp"].features["feature"])  # every interpreted feature, only those
    f0 = dict(figs["f0"])
    png = (cohort["interp"].path / "features" / "f0" / "top_genes.png").read_bytes()
    assert base64.b64decode(f0["top genes"].removeprefix("data:image/png;base64,")) == png
    assert "@media print" in html and "system-ui" in html and "@import" not in html


def test_no_original_identifier_is_left(cohort, tmp_path):
    html, table, pseudonyms, data = cohort["html"], cohort["table"], cohort["pseudonyms"], cohort["data"]
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "atlas.html").write_text(html, encoding="utf-8")
    write_data({"atlas": table}, folder / "data", pseudonyms)
    obs = cohort["ft"].obs
    ids = set(obs["subject_id"]) | set(obs["sample_id"]) | set(obs["cell_id"]) | set(obs.index)
    names = set(obs["patient_name"])
    assert find_identifiers(folder, ids | names).empty
    for sid in cohort["subjects"]:  # stricter than whole tokens: not even inside another word
        assert sid not in html
    assert "Patient Number" not in html and "patient_name" not in data["rows"]["columns"]
    # the examples are there, by pseudonym, with their cell ids rewritten the same way
    cols, values = data["rows"]["columns"], data["rows"]["values"]
    shown = pd.DataFrame(values, columns=cols)
    assert len(shown) > 0 and set(shown["subject_id"]) <= set(pseudonyms.mapping.values())
    want_cell = [f"{p}_c" for p in shown["subject_id"]]
    assert all(c.startswith(w) for c, w in zip(shown["cell_id"], want_cell))
    assert all(s == pseudonyms.mapping[o] for s, o in zip(shown["sample_id"], obs["sample_id"].iloc[data["rows"]["position"]]))
    # each feature's examples are its top rows, highest first
    X = _dense(cohort["ft"])
    pos = np.asarray(data["rows"]["position"])
    for j, f in enumerate(data["features"]):
        want = np.sort(X[:, j][X[:, j] > 0])[::-1][:5]
        np.testing.assert_allclose([a for _, a in f["ex"]], want, rtol=1e-3)
        np.testing.assert_allclose(X[pos[[i for i, _ in f["ex"]]], j], want, rtol=1e-6)


def test_without_the_feature_table_what_the_findings_and_interpretation_know(cohort):
    findings, interp = cohort["findings"], cohort["interp"]
    html, table = atlas_html(None, findings, interp, Pseudonyms(seed=1), env=environment(), title="t",
                             generated="g", version="v")
    assert table["feature"].tolist() == list(findings.subjects.var_names)
    data = _data(html)
    done = set(interp.features["feature"])
    top = interp.tables["top_genes"]
    for f in data["features"]:
        assert bool(f["desc"]) == (f["n"] in done) and bool(f["ex"]) == (f["n"] in done)
        if f["n"] in done:
            assert [g for g, _ in f["g"]] == top[top.feature == f["n"]]["gene"].head(TOP_GENES).tolist()
    for sid in cohort["subjects"]:
        assert sid not in html


def test_bad_input_is_named(cohort):
    ft, findings = cohort["ft"], cohort["findings"]
    kw = {"env": environment(), "title": "t", "generated": "g", "version": "v"}
    with pytest.raises(InputError, match="subject_key='donor'"):
        atlas_html(ft, findings, None, Pseudonyms(), subject_key="donor", **kw)
    with pytest.raises(InputError, match="another SAE"):
        atlas_html(ft[:, :4].copy(), findings, None, Pseudonyms(), **kw)
    with pytest.raises(InputError, match="n_examples"):
        atlas_html(ft, findings, None, Pseudonyms(), n_examples=0, **kw)
    with pytest.raises(InputError, match="findings"):
        atlas_html(ft, findings.table, None, Pseudonyms(), **kw)


def test_a_16k_feature_dictionary_builds_quickly():
    rng = np.random.default_rng(1)
    n, d, per_row = 50_000, 16_384, 32
    X = sp.csr_matrix((rng.exponential(1, n * per_row).astype(np.float32),
                       (np.repeat(np.arange(n), per_row), rng.integers(0, d, n * per_row))), shape=(n, d))
    subject = np.array([f"MRN-{i:05d}" for i in range(40)])[np.arange(n) % 40]
    obs = pd.DataFrame({"subject_id": subject, "cell_id": [f"{s}_c{i}" for i, s in enumerate(subject)],
                        "diagnosis": np.where(np.arange(n) % 40 % 2 == 1, "case", "control"),
                        "gene": rng.choice([f"G{i}" for i in range(2000)], n)}, index=[str(i) for i in range(n)])
    ft = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"f{j}" for j in range(d)]))
    # the Findings of the first 64 features: associate over 16k takes longer than this whole file
    findings = bv.associate(ft[:, :64].copy(), ["diagnosis"], n_permutations=0, n_boot=0, n_stability=0,
                            heldout=None, probes=False, progress=False)
    t0 = time.perf_counter()
    html, table = atlas_html(ft, findings, None, Pseudonyms(seed=0), env=environment(), title="big",
                             generated="g", version="v")
    took = time.perf_counter() - t0
    print(f"\natlas of {d} features × {n} rows: {took:.2f} s, {len(html) / 1e6:.1f} MB of HTML")
    assert len(table) == d and table["top_genes"].str.len().gt(0).all()
    assert not any(s in html for s in set(subject))
