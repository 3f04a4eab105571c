"""DNA inputs for :mod:`bioviz.adapters.sequence`: FASTA files, tables of sequences with
coordinates, and BED intervals read from a reference FASTA (through its samtools ``.fai``
index, or one built in memory). Coordinates are 0-based, half-open (BED convention); a FASTA
header ``chr:start-end`` or ``chr:start-end(strand)`` (``bedtools getfasta`` style) gives a
record its coordinates, otherwise the record name is its ``chrom`` and it starts at 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bioviz.errors import InputError

_COMPLEMENT = str.maketrans("ACGTRYKMBVDHNSWacgtrykmbvdhnsw", "TGCAYRMKVBHDNSWtgcayrmkvbhdnsw")
_HEADER = re.compile(r"^(?P<chrom>[^:\s]+):(?P<start>\d+)-(?P<end>\d+)(?:\((?P<strand>[+-])\))?$")


def reverse_complement(seq: str) -> str:
    return seq.translate(_COMPLEMENT)[::-1]


@dataclass
class Record:
    seq_id: str
    chrom: str
    start: int
    end: int
    strand: str
    subject_id: str
    sample_id: str
    seq: str | None = None  # None: fetched from the reference when needed


# -- inputs -------------------------------------------------------------------------------


def read_fasta(path):
    """``(name, sequence)`` pairs of a FASTA file (name: the header up to the first space)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FASTA file {path} does not exist")
    name, parts = None, []
    opener = _open_text(path)
    with opener as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith(">"):
                if name is not None:
                    yield name, "".join(parts)
                name, parts = line[1:].split()[0] if line[1:].strip() else f"record{n}", []
            elif name is None:
                raise InputError(f"{path}: line {n} has sequence before any '>' header; not a FASTA file")
            else:
                parts.append(line)
    if name is not None:
        yield name, "".join(parts)


def _open_text(path: Path):
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rt")
    return open(path)


class FastaIndex:
    """Random access to an uncompressed reference FASTA through a samtools ``.fai`` index
    (read if present next to the file, else built by one scan and kept in memory)."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"reference FASTA {self.path} does not exist")
        if self.path.suffix == ".gz":
            raise InputError(f"{self.path}: bgzip/gzip references are not supported; decompress it")
        fai = Path(str(self.path) + ".fai")
        self.index = self._read_fai(fai) if fai.is_file() else self._build()

    @staticmethod
    def _read_fai(fai: Path) -> dict:
        out = {}
        for line in fai.read_text().splitlines():
            name, length, offset, bases, width = line.split("\t")[:5]
            out[name] = (int(length), int(offset), int(bases), int(width))
        return out

    def _build(self) -> dict:
        out, name, length, offset, bases, width, pos = {}, None, 0, 0, 0, 0, 0
        with open(self.path, "rb") as f:
            for raw in f:
                if raw.startswith(b">"):
                    if name is not None:
                        out[name] = (length, offset, bases, width)
                    name = raw[1:].split()[0].decode()
                    length, offset, bases, width = 0, pos + len(raw), 0, 0
                else:
                    stripped = raw.rstrip(b"\r\n")
                    if bases == 0:
                        bases, width = len(stripped), len(raw)
                    length += len(stripped)
                pos += len(raw)
        if name is not None:
            out[name] = (length, offset, bases, width)
        return out

    def fetch(self, chrom: str, start: int, end: int) -> str:
        if chrom not in self.index:
            raise InputError(f"{self.path} has no sequence {chrom!r} (has: {list(self.index)[:5]}...)")
        length, offset, bases, width = self.index[chrom]
        if not 0 <= start < end <= length:
            raise InputError(f"{chrom}:{start}-{end} is outside {chrom} (length {length}) in {self.path}")
        lo = offset + (start // bases) * width + start % bases
        hi = offset + ((end - 1) // bases) * width + (end - 1) % bases + 1
        with open(self.path, "rb") as f:
            f.seek(lo)
            chunk = f.read(hi - lo)
        return chunk.replace(b"\n", b"").replace(b"\r", b"").decode()


def records_from(data, *, reference=None, parse_header: bool = True, subject_id=None,
                 sample_id=None, sequence_column="sequence") -> tuple[list[Record], FastaIndex | None]:
    """Records from a FASTA path, a table (DataFrame or .tsv/.csv path), or a BED path (with
    ``reference=``, a FASTA)."""
    if isinstance(data, pd.DataFrame):
        return _from_table(data, "the table", sequence_column, subject_id, sample_id), None
    path = Path(data)
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() == ".bed" or reference is not None:
        if reference is None:
            raise InputError(f"{path}: a BED file needs reference= (the genome FASTA)")
        ref = FastaIndex(reference)
        return _from_bed(path, ref, subject_id, sample_id), ref
    if path.suffix.lower() in (".tsv", ".csv", ".txt"):
        frame = pd.read_csv(path, sep="," if path.suffix.lower() == ".csv" else "\t")
        return _from_table(frame, str(path), sequence_column, subject_id, sample_id), None
    if any(s in suffixes for s in (".fa", ".fasta", ".fna")):
        recs = []
        for name, seq in read_fasta(path):
            m = _HEADER.match(name) if parse_header else None
            chrom, start, strand = (m["chrom"], int(m["start"]), m["strand"] or "+") if m else (name, 0, "+")
            if m and int(m["end"]) - start != len(seq):
                raise InputError(f"{path}: record {name} says {int(m['end']) - start} bp but holds {len(seq)}")
            recs.append(Record(name, chrom, start, start + len(seq), strand, subject_id or name,
                               sample_id or subject_id or name, seq))
        if not recs:
            raise InputError(f"{path}: no FASTA records")
        return recs, None
    raise InputError(f"{path}: unknown input; expected FASTA (.fa/.fasta/.fna[.gz]), a table (.tsv/.csv) or .bed")


def _from_table(frame: pd.DataFrame, where, column, subject_id, sample_id) -> list[Record]:
    if column not in frame.columns:
        raise InputError(f"{where}: no column {column!r} holding sequences (sequence_column=; columns: {list(frame.columns)})")
    recs = []
    for i, row in enumerate(frame.to_dict("records")):
        seq = str(row[column])
        sid = str(row.get("seq_id", row.get("name", i)))
        chrom = str(row.get("chrom", sid))
        start = int(row.get("start", 0))
        end = int(row.get("end", start + len(seq)))
        strand = str(row.get("strand", "+"))
        if strand not in ("+", "-"):
            raise InputError(f"{where}: row {i} has strand {strand!r}; expected '+' or '-'")
        if end - start != len(seq):
            raise InputError(f"{where}: row {i} ({sid}) spans {chrom}:{start}-{end} ({end - start} bp) "
                             f"but its sequence has {len(seq)} bp")
        subj = str(row.get("subject_id", subject_id or sid))
        recs.append(Record(sid, chrom, start, end, strand, subj, str(row.get("sample_id", sample_id or subj)), seq))
    if not recs:
        raise InputError(f"{where} has no rows")
    return recs


def _from_bed(path: Path, ref: FastaIndex, subject_id, sample_id) -> list[Record]:
    if not path.is_file():
        raise FileNotFoundError(f"BED file {path} does not exist")
    recs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        f = line.split("\t")
        if len(f) < 3:
            raise InputError(f"{path}: line {n} has {len(f)} tab-separated fields; BED needs chrom, start, end")
        try:
            start, end = int(f[1]), int(f[2])
        except ValueError:
            raise InputError(f"{path}: line {n}: start/end {f[1]!r}, {f[2]!r} are not integers") from None
        if end <= start:
            raise InputError(f"{path}: line {n}: end {end} is not after start {start}")
        strand = f[5] if len(f) > 5 and f[5] in ("+", "-") else "+"
        name = f[3] if len(f) > 3 and f[3] not in ("", ".") else f"{f[0]}:{start}-{end}({strand})"
        ref_len = ref.index.get(f[0], (None,))[0]
        if ref_len is None or end > ref_len:
            raise InputError(f"{path}: line {n}: {f[0]}:{start}-{end} is not inside the reference {ref.path}")
        subj = subject_id or name
        recs.append(Record(name, f[0], start, end, strand, subj, sample_id or subj))
    if not recs:
        raise InputError(f"{path}: no intervals")
    return recs
