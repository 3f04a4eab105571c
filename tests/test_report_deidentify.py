"""De-identification for reports: random pseudonyms, dates to years, ages 90+, free text and
identifying columns left out, the key kept outside the report, and a scan of every file
(including a PDF's compressed text) for original identifiers."""

import matplotlib
import numpy as np
import pandas as pd
import pytest

from bioviz.errors import InputError
from bioviz.report import Pseudonyms, deidentify, find_identifiers

matplotlib.use("Agg")


def _clinical():
    return pd.DataFrame({
        "subject_id": ["MRN-004711", "MRN-008812", "MRN-009913", "MRN-010014"],
        "sample_id": ["MRN-004711", "MRN-008812", "MRN-009913", "MRN-010014"],
        "name": ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra"],
        "scan_date": ["2019-03-04", "2020-11-30", "2021-01-15", "2018-07-07"],
        "age": [34.0, 91.0, 89.0, 102.0],
        "diagnosis": ["AD", "CN", "AD", "CN"],
        "notes": ["seen at St Mary's by Dr Jones, referred for memory complaints",
                  "follow-up at the Royal Free after a fall at home in Camden",
                  "daughter reports word-finding difficulty since last spring",
                  "no complaints; volunteer recruited through the newsletter"],
    })


def test_pseudonyms_are_random_unique_and_stable_within_a_report():
    ids = [f"MRN-{i:06d}" for i in range(500)]
    a, b = Pseudonyms(), Pseudonyms()
    pa, pb = a(ids), b(ids)
    assert pa.is_unique and pa.str.fullmatch(r"S-[2-9A-HJ-NP-Z]{6}").all()
    # not a function of the identifier: two reports give the same subject different names
    assert (pa != pb).mean() > 0.99
    assert a(["MRN-000007", "MRN-000007"]).tolist() == [pa[7]] * 2  # stable within one report
    assert Pseudonyms(seed=1)(ids).tolist() == Pseudonyms(seed=1)(ids).tolist()


def test_deidentify_by_hand():
    table = _clinical()
    p = Pseudonyms(seed=0)
    shown, record = deidentify(table, p, identifying=["name"])
    assert list(shown.columns) == ["subject_id", "sample_id", "scan_date", "age", "diagnosis"]
    assert shown["subject_id"].tolist() == shown["sample_id"].tolist()
    assert not shown["subject_id"].isin(table["subject_id"]).any()
    assert shown["subject_id"].tolist() == [p.mapping[s] for s in table["subject_id"]]
    assert shown["scan_date"].tolist() == [2019, 2020, 2021, 2018]
    assert shown["age"].tolist() == [34.0, "90+", 89.0, "90+"]
    assert record == {"pseudonymised": ["subject_id", "sample_id"], "dropped_identifying": ["name"],
                      "dropped_free_text": ["notes"], "dates_to_year": ["scan_date"], "ages_capped": ["age"]}
    kept, record = deidentify(table, p, identifying=["name"], keep_text=["notes"])
    assert "notes" in kept and record["dropped_free_text"] == []
    with pytest.raises(InputError, match=r"identifying columns \['mrn'\]"):
        deidentify(table, p, identifying=["mrn"])
    with pytest.raises(InputError, match="subject_key='patient'"):
        deidentify(table, p, subject_key="patient")


def test_the_key_never_lands_in_the_report(tmp_path):
    p = Pseudonyms(seed=0)
    p(["MRN-1", "MRN-2"])
    with pytest.raises(InputError, match="inside the report folder"):
        p.write_key(tmp_path / "report" / "key.tsv", report_dir=tmp_path / "report")
    key = pd.read_csv(p.write_key(tmp_path / "private" / "key.tsv", report_dir=tmp_path / "report"), sep="\t")
    assert dict(zip(key["subject_id"], key["pseudonym"])) == p.mapping


def test_find_identifiers_reads_every_file_kind_and_whole_tokens_only(tmp_path):
    import matplotlib.pyplot as plt

    (tmp_path / "data").mkdir()
    (tmp_path / "report.html").write_text("<td>MRN-004711</td><td>MRN-0047110</td>")  # 2nd: longer id
    pd.DataFrame({"id": ["S-ABCDEF", "Grace Hopper"]}).to_csv(tmp_path / "data" / "t.tsv", sep="\t")
    pd.DataFrame({"id": ["MRN-008812"]}).to_parquet(tmp_path / "data" / "t.parquet")
    with matplotlib.rc_context({"pdf.use14corefonts": True}):  # literal text in a compressed stream
        fig = plt.figure()
        fig.text(0.1, 0.5, "subject MRN-009913 at baseline")
        fig.savefig(tmp_path / "report.pdf")
        plt.close(fig)
    assert b"MRN-009913" not in (tmp_path / "report.pdf").read_bytes()  # only the inflated text has it
    found = find_identifiers(tmp_path, ["MRN-004711", "MRN-008812", "MRN-009913", "Grace Hopper", "AD", None])
    got = {(r.file, r.value): r.count for r in found.itertuples()}
    assert got == {("report.html", "MRN-004711"): 1, ("data/t.tsv", "Grace Hopper"): 1,
                   ("data/t.parquet", "MRN-008812"): 1, ("report.pdf", "MRN-009913"): 1}
    assert found.attrs["not_searched"] == ["AD"]
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "r.html").write_text("<td>S-ABCDEF</td>")
    assert find_identifiers(clean, ["MRN-004711"]).empty


def test_a_deidentified_table_written_out_is_clean(tmp_path):
    table = _clinical()
    shown, _ = deidentify(table, Pseudonyms(), identifying=["name"])
    out = tmp_path / "report"
    out.mkdir()
    shown.to_csv(out / "subjects.tsv", sep="\t", index=False)
    shown.to_json(out / "subjects.json", orient="records")
    originals = [*table["subject_id"], *table["name"], *table["scan_date"], *table["notes"]]
    assert find_identifiers(out, originals).empty
    # the same check catches the table written before de-identification
    table.to_csv(out / "raw.tsv", sep="\t", index=False)
    assert set(find_identifiers(out, originals)["value"]) >= set(table["subject_id"]) | {"Ada Lovelace"}
    assert np.isin(["raw.tsv"], find_identifiers(out, originals)["file"]).all()


def test_data_folder_holds_every_table_as_tsv_and_json_with_pseudonyms(tmp_path):
    import json

    from bioviz.report.data import write_data

    table = _clinical()
    candidates = pd.DataFrame({"feature": ["f3", "f9"], "effect": [0.81, np.nan], "q": [0.003, np.inf]})
    subjects = table.set_index("subject_id")[["age", "diagnosis"]]
    p = Pseudonyms(seed=0)
    index = write_data({"candidates": candidates, "subjects": subjects, "per subject/rows": table[["subject_id"]]},
                       tmp_path / "data", p)
    assert index["tsv"].tolist() == ["candidates.tsv", "subjects.tsv", "per_subject_rows.tsv"]
    back = pd.read_csv(tmp_path / "data" / "candidates.tsv", sep="\t")
    np.testing.assert_allclose(back["effect"], candidates["effect"])  # NA read back as NaN
    assert json.loads((tmp_path / "data" / "candidates.json").read_text()) == [
        {"feature": "f3", "effect": 0.81, "q": 0.003}, {"feature": "f9", "effect": None, "q": "inf"}]
    subj = pd.read_csv(tmp_path / "data" / "subjects.tsv", sep="\t")  # the named index became a column
    assert subj["subject_id"].tolist() == [p.mapping[s] for s in table["subject_id"]]
    rows = pd.read_csv(tmp_path / "data" / "per_subject_rows.tsv", sep="\t")
    assert rows["subject_id"].tolist() == subj["subject_id"].tolist()  # one pseudonym per subject
    assert find_identifiers(tmp_path / "data", table["subject_id"]).empty
    with pytest.raises(InputError, match=r"tables\['x'\]: expected a pandas DataFrame"):
        write_data({"x": [1, 2]}, tmp_path / "d2", p)
