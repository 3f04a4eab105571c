"""The one table reader (manifests, metadata, clinical tables): by extension, IDs as text,
and errors that name the file and what was expected."""

import pandas as pd
import pytest

from bioviz.tables import TableError, read_table


def test_every_kind_reads_the_same_table_with_ids_as_text(tmp_path):
    table = pd.DataFrame({"subject_id": ["007", "012"], "sample_id": ["1", "2"], "age": [40.5, 61.0]})
    table.to_csv(tmp_path / "t.csv", index=False)
    table.to_csv(tmp_path / "t.csv.gz", index=False)
    for name in ("t.tsv", "t.TXT", "t.tab", "t.tsv.gz"):
        table.to_csv(tmp_path / name, sep="\t", index=False)
    table.to_parquet(tmp_path / "t.parquet")
    for name in ("t.csv", "t.csv.gz", "t.tsv", "t.TXT", "t.tab", "t.tsv.gz", "t.parquet"):
        pd.testing.assert_frame_equal(read_table(tmp_path / name), table)


def test_missing_unknown_and_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"clinical table not found: .*nope\.csv"):
        read_table(tmp_path / "nope.csv", what="clinical table")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(TableError, match=r"t\.xlsx: unsupported table type '\.xlsx'; expected \.csv"):
        read_table(tmp_path / "t.xlsx")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(TableError, match=r"empty\.csv: cannot read the table \(EmptyDataError"):
        read_table(tmp_path / "empty.csv")
