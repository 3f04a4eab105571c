import logging

import pandas as pd
import pytest
from test_volume_common import write_cohort

from bioviz.adapters.volume import Cohort, CohortError


def test_manifest_kinds_resolve_paths_and_keep_clinical_columns(tmp_path):
    csv = write_cohort(tmp_path / "c", n=3)
    table = pd.read_csv(csv)
    table.to_csv(tmp_path / "c" / "m.tsv", sep="\t", index=False)
    table.to_parquet(tmp_path / "c" / "m.parquet")
    for path in (csv, tmp_path / "c" / "m.tsv", tmp_path / "c" / "m.parquet"):
        c = Cohort.read(path)
        assert len(c) == 3 and c.has_masks
        assert c[1].image == (tmp_path / "c" / "s1.nii.gz").resolve()
        assert c[1].sample_id == c[1].subject_id == "S1"  # no sample_id column: one scan per subject
        assert c.clinical_columns == ["age", "group"]
        assert c.meta([2])["age"].tolist() == [52.0]
    with pytest.raises(CohortError, match=r"unsupported manifest type '\.xlsx'"):
        (tmp_path / "m.xlsx").write_text("x")
        Cohort.read(tmp_path / "m.xlsx")


def test_duplicate_subjects_name_the_rows(tmp_path):
    csv = write_cohort(tmp_path, n=3, masks=False)
    t = pd.read_csv(csv)
    t.loc[2, "subject_id"] = "S0"
    t.to_csv(csv, index=False)
    with pytest.raises(CohortError, match=r"subject_id 'S0' appears in row 1 \(line 2\), row 3 \(line 4\).*sample_id"):
        Cohort.read(csv)
    t["sample_id"] = ["a", "b", "c"]  # several scans of one subject are fine with sample ids
    t.to_csv(csv, index=False)
    c = Cohort.read(csv)
    assert [s.subject_id for s in c] == ["S0", "S1", "S0"] and c.find("c").row == 3


def test_missing_files_raise_or_skip_with_a_count(tmp_path, caplog):
    csv = write_cohort(tmp_path, n=3)
    (tmp_path / "s1.nii.gz").unlink()
    with pytest.raises(CohortError, match=r"1 file\(s\) not found: row 2 \(line 3\): image .*s1\.nii\.gz"):
        Cohort.read(csv)
    with caplog.at_level(logging.WARNING):
        c = Cohort.read(csv, on_missing="skip")
    assert [s.subject_id for s in c] == ["S0", "S2"] and c.skipped[0]["row"] == 2
    assert "skipping 1 row(s)" in caplog.text


def test_paths_may_not_leave_the_manifest_folder_unless_allowed(tmp_path):
    write_cohort(tmp_path / "elsewhere", n=1, masks=False)
    (tmp_path / "c").mkdir()
    pd.DataFrame({"subject_id": ["x"], "image": ["../elsewhere/s0.nii.gz"]}).to_csv(tmp_path / "c" / "m.csv", index=False)
    with pytest.raises(CohortError, match=r"row 1 \(line 2\): image path '\.\./elsewhere/s0\.nii\.gz' leaves"):
        Cohort.read(tmp_path / "c" / "m.csv")
    assert Cohort.read(tmp_path / "c" / "m.csv", allow_outside=True)[0].image.name == "s0.nii.gz"


def test_structural_problems_are_named(tmp_path):
    (tmp_path / "a.csv").write_text("subject,image\nx,y.nii\n")
    with pytest.raises(CohortError, match="required column 'subject_id' is missing"):
        Cohort.read(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("subject_id,image,world_x\nx,y.nii,1\n")
    with pytest.raises(CohortError, match=r"columns \['world_x'\] clash"):
        Cohort.read(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("subject_id,image\nx,\n")
    with pytest.raises(CohortError, match=r"row 1 \(line 2\) \(subject 'x'\) has no image path"):
        Cohort.read(tmp_path / "c.csv")
    with pytest.raises(CohortError, match="manifest not found"):
        Cohort.read(tmp_path / "nope.csv")
