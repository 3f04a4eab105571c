"""bv.report end to end on real Findings and a real interpretation: the folder's contents,
de-identification of every file, escaping of hostile names, the empty case, atomic writes and
overwrite refusal, template overrides, and the numbers checked against independent sources."""

import json
import re

import numpy as np
import pandas as pd
import pytest

import bioviz as bv
from bioviz.analysis.synthetic import make_cohort
from bioviz.report import RUO, find_identifiers, references
from bioviz.report.figures import kaplan_meier

HOSTILE = '<script>alert(1)</script>'
HOSTILE_ATTR = '"><img src=x onerror=alert(1)>'


def _cohort(seed=1, planted=None, n_subjects=40):
    ft = make_cohort(n_subjects, 12, 16, planted=planted if planted is not None else {0: 1.8, 3: 1.4},
                     within_subject=(), seed=seed)
    obs = ft.obs
    subj = obs["subject_id"].astype(str)
    # identifying and sensitive clinical columns, constant within a subject
    num = subj.str[1:].astype(int)
    obs["mrn"] = "MRN-" + (4711000 + num).astype(str)
    obs["scan_date"] = (pd.to_datetime("2019-03-01") + pd.to_timedelta(num * 17, unit="D")).dt.strftime("%Y-%m-%d")
    obs["age"] = np.where(num % 7 == 0, 93.0, obs["age"])
    obs["notes"] = "seen by Dr Grace Hopper at the Northside clinic, visit " + num.astype(str)
    obs["cell_id"] = subj + "_c" + pd.Series(np.arange(len(obs)) % 12, index=obs.index).astype(str)
    return ft


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    ft = _cohort()
    ft.write_h5ad(tmp / "features.h5ad")
    findings = bv.associate(str(tmp / "features.h5ad"), ["diagnosis"], covariates=["age", "sex"], n_permutations=50,
                            n_boot=50, n_stability=10, out=str(tmp / "findings"), progress=False)
    bv.interpret(str(tmp / "findings"), top=3, progress=False)
    rep = bv.report(str(tmp / "findings"), identifying=["mrn"], key=str(tmp / "key.tsv"), seed=3,
                    pdf=False, atlas=False, progress=False)
    return {"tmp": tmp, "ft": ft, "findings": findings, "rep": rep}


def test_the_report_folder_holds_the_report_and_every_table(study):
    rep, f = study["rep"], study["findings"]
    out = rep.path
    assert out == study["tmp"] / "report" and rep.html.exists() and (out / "data" / "candidates.tsv").exists()
    html = rep.html.read_text()
    assert RUO in html
    assert len(f.candidates) >= 2 and rep.n_candidates == len(f.candidates)
    for r in f.candidates.itertuples():  # a page per candidate, linked from the contents
        assert f'id="candidate-{r.rank}"' in html and f'href="#candidate-{r.rank}"' in html
    refs = references(html)
    assert set(refs["kind"]) <= {"inline", "anchor"}, refs[~refs["kind"].isin(["inline", "anchor"])]
    assert (refs["kind"] == "inline").sum() >= len(f.candidates)  # at least the distribution figures
    # every table in data/ as TSV and JSON, listed in the index and in the report
    index = pd.read_csv(out / "data" / "index.tsv", sep="\t")
    for t in index.itertuples():
        assert (out / "data" / t.tsv).exists() and (out / "data" / t.json).exists()
        assert t.tsv in html
    for section in ("Objective and intended use", "Cohort", "Model, layer and dictionary", "Methods",
                    "Candidate biomarkers", "Probes", "Limitations", "What clinical validation would still need",
                    "De-identification"):
        assert f">{section}</h2>" in html or f">{section}: " in html, section


def test_numbers_match_the_findings_and_the_rows(study):
    out, f, ft = study["rep"].path, study["findings"], study["ft"]
    cand = pd.read_csv(out / "data" / "candidates.tsv", sep="\t")
    assert cand["feature"].tolist() == f.candidates["feature"].tolist()
    np.testing.assert_allclose(cand["q"], f.candidates["q"], rtol=1e-12)
    # the subject-level values shown are the mean of each subject's rows (recomputed here with pandas)
    subj = pd.read_csv(out / "data" / "subjects.tsv", sep="\t")
    key = pd.read_csv(study["tmp"] / "key.tsv", sep="\t").set_index("pseudonym")["subject_id"]
    subj["original"] = subj["subject_id"].map(key)
    assert subj["original"].notna().all()
    rows = pd.DataFrame(ft.X.toarray(), columns=ft.var_names)
    rows["subject"] = ft.obs["subject_id"].astype(str).to_numpy()
    expected = rows.groupby("subject").mean()
    for feat in f.candidates["feature"].unique():
        np.testing.assert_allclose(subj[feat].to_numpy(), expected.loc[subj["original"], feat].to_numpy(), rtol=1e-5)
    # and each pseudonym keeps its subject's label
    truth = ft.obs.groupby("subject_id", observed=True)["diagnosis"].first()
    assert (subj["diagnosis"].to_numpy() == truth.loc[subj["original"]].to_numpy()).all()
    html = study["rep"].html.read_text()
    top = f.candidates.iloc[0]
    assert f"{top['effect']:.3g}".replace("-", "−") in html  # the effect as printed


def test_nothing_identifying_is_left_anywhere(study):
    out, ft = study["rep"].path, study["ft"]
    ids = set(ft.obs["subject_id"].astype(str)) | set(ft.obs["mrn"].astype(str))
    assert find_identifiers(out, ids).empty
    subj = pd.read_csv(out / "data" / "subjects.tsv", sep="\t")
    assert "mrn" not in subj and "notes" not in subj  # identifying and free text left out
    assert set(subj["scan_date"]) <= {2019, 2020, 2021}  # dates reduced to the year
    assert "90+" in set(subj["age"].astype(str)) and pd.to_numeric(subj["age"], errors="coerce").max() <= 89
    text = "".join(p.read_text() for p in out.rglob("*") if p.suffix in (".html", ".tsv", ".json"))
    assert "Grace Hopper" not in text
    # ids embedded in other text (cell ids, "S027: 0.20, ...") were replaced by the pseudonyms
    examples = pd.read_csv(out / "data" / "interpretation_summary.tsv", sep="\t")
    assert examples["top_subjects"].str.contains(r"S-[2-9A-Z]{6}: ").all()
    # the key lies outside the report and maps every pseudonym the report uses
    key = pd.read_csv(study["tmp"] / "key.tsv", sep="\t")
    assert set(subj["subject_id"]) <= set(key["pseudonym"])
    assert not any(p.name == "key.tsv" for p in out.rglob("*"))


def test_a_title_with_an_identifier_fails_the_check_and_leaves_nothing(study, tmp_path):
    sid = str(study["ft"].obs["subject_id"].iloc[0])
    with pytest.raises(bv.InputError, match="de-identification check failed: .*report.html"):
        bv.report(study["findings"], out=tmp_path / "r", title=f"Study of {sid}", pdf=False, atlas=False,
                  progress=False)
    assert list(tmp_path.iterdir()) == []  # no report, no staging folder


def test_an_existing_report_is_refused_and_replaced_only_when_asked(study, tmp_path):
    out = tmp_path / "r"
    bv.report(study["findings"], out=out, pdf=False, atlas=False, progress=False)
    with pytest.raises(bv.InputError, match="already holds a report"):
        bv.report(study["findings"], out=out, pdf=False, atlas=False, progress=False)
    first = (out / "report.html").read_text()
    bv.report(study["findings"], out=out, title="Second", overwrite=True, pdf=False, atlas=False, progress=False)
    assert (out / "report.html").read_text() != first and "<title>Second</title>" in (out / "report.html").read_text()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.docx").write_text("x")
    with pytest.raises(bv.InputError, match="not a bioviz report folder"):
        bv.report(study["findings"], out=mine, overwrite=True, pdf=False, atlas=False, progress=False)
    assert (mine / "thesis.docx").exists()
    with pytest.raises(bv.InputError, match="inside the report folder"):
        bv.report(study["findings"], out=tmp_path / "r2", key=tmp_path / "r2" / "key.tsv", pdf=False,
                  atlas=False, progress=False)
    with pytest.raises(bv.InputError, match="identifying=\\['nhs_number'\\]"):
        bv.report(study["findings"], out=tmp_path / "r3", identifying=["nhs_number"], pdf=False, atlas=False,
                  progress=False)


def test_hostile_names_are_shown_literally_never_as_markup(tmp_path):
    ft = _cohort(seed=4)
    ft.obs[HOSTILE] = np.where(ft.obs["diagnosis"] == "case", HOSTILE_ATTR, "plain")
    ft.obs = ft.obs.drop(columns=["diagnosis"])
    ft.write_h5ad(tmp_path / "features.h5ad")
    bv.associate(str(tmp_path / "features.h5ad"), [{"column": HOSTILE, "kind": "binary", "case": HOSTILE_ATTR}],
                 n_permutations=0, n_boot=0, n_stability=0, heldout=None, probes=False, out=str(tmp_path / "findings"),
                 progress=False)
    rep = bv.report(str(tmp_path / "findings"), title=HOSTILE, lab=HOSTILE_ATTR, pdf=False, atlas=False,
                    progress=False)
    html = rep.html.read_text()
    assert rep.n_candidates >= 1
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<script" not in html.lower()  # the report runs no script at all
    assert "script-src" not in html and "default-src 'none'" in html  # and its policy forbids any


def test_no_candidate_is_a_report_that_says_so(tmp_path):
    ft = make_cohort(30, 10, 8, planted={}, within_subject=(), seed=7)
    ft.write_h5ad(tmp_path / "features.h5ad")
    f = bv.associate(str(tmp_path / "features.h5ad"), ["diagnosis"], n_permutations=0, n_boot=0, n_stability=0,
                     heldout=None, probes=False, out=str(tmp_path / "findings"), progress=False)
    assert f.candidates.empty
    rep = bv.report(f, out=tmp_path / "report", pdf=False, atlas=False, progress=False)
    html = rep.html.read_text()
    assert rep.n_candidates == 0 and "No candidate biomarker: none of the 8 features reached q &lt; 0.05" in html
    assert 'class="candidate"' not in html and RUO in html
    assert pd.read_csv(rep.path / "data" / "candidates.tsv", sep="\t").empty


def test_a_lab_template_replaces_the_shipped_one_and_is_still_escaped(study, tmp_path):
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "report.html.j2").write_text(
        "<html><body><p>{{ r.banner }}</p><h1>Northside lab: {{ r.title }}</h1>"
        "{% for p in r.pages %}<h2>{{ p.feature }}</h2>{% endfor %}</body></html>")
    rep = bv.report(study["findings"], out=tmp_path / "r", title=HOSTILE, templates=folder, pdf=False, atlas=False,
                    progress=False)
    html = rep.html.read_text()
    assert html.startswith("<html><body><p>For Research Use Only.") and "Northside lab: &lt;script&gt;" in html
    assert len(re.findall("<h2>", html)) == rep.n_candidates
    with pytest.raises(bv.InputError, match="templates=.*not a folder"):
        bv.report(study["findings"], out=tmp_path / "r2", templates=tmp_path / "nope", progress=False)


def test_survival_labels_get_kaplan_meier_curves_equal_to_lifelines(tmp_path):
    lifelines = pytest.importorskip("lifelines")
    rng = np.random.default_rng(0)
    t, e = rng.integers(1, 20, 60).astype(float), rng.random(60) < 0.6
    km = kaplan_meier(t, e)
    ref = lifelines.KaplanMeierFitter().fit(t, e).survival_function_.iloc[:, 0]
    np.testing.assert_allclose(km["survival"], ref.reindex(km["time"]).to_numpy(), atol=1e-12)
    # a survival study's report draws them
    ft = make_cohort(40, 8, 6, planted={0: 2.0}, within_subject=(), seed=2)
    case = (ft.obs.groupby("subject_id", observed=True)["diagnosis"].first() == "case")
    sub_t = pd.Series(np.where(case, rng.exponential(10, len(case)), rng.exponential(30, len(case))), index=case.index)
    ft.obs["os_months"] = ft.obs["subject_id"].map(sub_t).astype(float).round(1)
    ft.obs["death"] = ft.obs["subject_id"].map(pd.Series(rng.random(len(case)) < 0.7, index=case.index)).astype(int)
    ft.write_h5ad(tmp_path / "features.h5ad")
    f = bv.associate(str(tmp_path / "features.h5ad"), [{"name": "os", "time": "os_months", "event": "death"}],
                     n_permutations=0, n_boot=0, n_stability=0, heldout=None, probes=False,
                     out=str(tmp_path / "findings"), progress=False)
    rep = bv.report(f, out=tmp_path / "report", pdf=False, atlas=False, progress=False)
    html = rep.html.read_text()
    if rep.n_candidates:
        assert "Kaplan–Meier curves" in html
    assert "survival: " in html and "events in 40 subjects" in html


def test_cli_report_from_a_config(study, tmp_path, capsys):
    cfg = tmp_path / "report.yaml"
    cfg.write_text(json.dumps({"findings": str(study["tmp"] / "findings"), "out": str(tmp_path / "r"),
                               "title": "From a config", "pdf": False, "atlas": False, "progress": False}))
    from bioviz.cli import main

    assert main(["report", "--config", str(cfg)]) == 0
    assert "report " in capsys.readouterr().out and "From a config" in (tmp_path / "r" / "report.html").read_text()
