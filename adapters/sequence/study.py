"""The DNA demo study: synthetic subjects whose sequences carry JASPAR motif sites, a label set
by one planted motif, and the check that the study found that motif again.

- :func:`jaspar_pfm`, :func:`random_dna`, :func:`sample_sites`, :func:`plant`, :func:`decode`:
  the simulation (also what ``experiments/train_sequence_demo.py`` trains the demo model on).
- :class:`PlantedMotifs`: the cohort builder of ``experiments/studies/dna_motifs.yaml``.

Sites are sampled column by column from the JASPAR matrix (pyjaspar's offline JASPAR2026), so
no two are alike and weak columns vary as they do in real binding sites; half are planted on
the minus strand (written reverse-complemented). Background bases are drawn independently
with the study's GC content (0.42, about the human genome's).
"""

from __future__ import annotations

import json
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from bioviz.errors import InputError, positive_int

#: JASPAR release the simulation samples from (ships with pyjaspar, offline)
RELEASE = "JASPAR2026"
_BASES = np.array(list("ACGT"))


# ---------------------------------------------------------------------------------------------
# the simulation


@cache
def _fetch(matrix_id: str, release: str):
    from pyjaspar import jaspardb

    with warnings.catch_warnings():  # an unknown ID: pyjaspar warns, then we say it ourselves
        warnings.simplefilter("ignore")
        m = jaspardb(release=release).fetch_motif_by_id(matrix_id)
    if m is None:
        raise InputError(f"motif {matrix_id!r} is not a matrix ID of {release} (e.g. 'MA0139.2' for CTCF)")
    counts = np.array([m.counts[b] for b in "ACGT"], dtype=np.float64)
    return str(m.name), counts / counts.sum(0)


def jaspar_pfm(matrix_id: str, release: str = RELEASE) -> tuple[str, np.ndarray]:
    """``(name, probabilities [4, width])`` of a JASPAR matrix (rows A, C, G, T)."""
    if not isinstance(matrix_id, str) or not matrix_id:
        raise InputError(f"motif must be a JASPAR matrix ID such as 'MA0139.2', got {matrix_id!r}")
    name, pfm = _fetch(matrix_id, release)
    return name, pfm.copy()


def random_dna(rng: np.random.Generator, n: int, length: int, gc: float = 0.42) -> np.ndarray:
    """``[n, length]`` base codes (0..3 = A, C, G, T), independent bases with GC share ``gc``."""
    if not 0 < gc < 1:
        raise InputError(f"gc={gc}: expected a share between 0 and 1")
    p = np.array([1 - gc, gc, gc, 1 - gc]) / 2
    return rng.choice(4, size=(n, length), p=p).astype(np.uint8)


def sample_sites(rng: np.random.Generator, pfm: np.ndarray, n: int) -> np.ndarray:
    """``[n, width]`` sites, each column drawn from the matrix's column."""
    cum = np.cumsum(pfm, axis=0)  # [4, w]
    u = rng.random((n, pfm.shape[1]))
    return np.minimum((u[:, :, None] > cum.T[None]).sum(-1), 3).astype(np.uint8)


def plant(rng: np.random.Generator, codes: np.ndarray, presence: np.ndarray, pfms: list[np.ndarray],
          *, margin: int = 0, names: list[str] | None = None) -> pd.DataFrame:
    """Write one sampled site of ``pfms[j]`` into each sequence ``i`` where ``presence[i, j]``,
    in place, at a random position at least ``margin`` bp from either end and not overlapping
    another planted site; a random half on the minus strand. Returns the sites: ``seq``
    (row), ``motif`` (``names[j]`` or ``j``), ``start``, ``end`` (0-based, half-open),
    ``strand``."""
    n, length = codes.shape
    sites = {j: sample_sites(rng, pfm, int(presence[:, j].sum())) for j, pfm in enumerate(pfms)}
    used = dict.fromkeys(sites, 0)
    rows = []
    for i in range(n):
        taken: list[tuple[int, int]] = []
        for j in rng.permutation(np.flatnonzero(presence[i])):
            site = sites[j][used[j]]
            used[j] += 1
            w = len(site)
            for _ in range(100):  # rejection: a free stretch is easy to find in these lengths
                at = int(rng.integers(margin, length - margin - w + 1))
                if all(at + w <= a or b <= at for a, b in taken):
                    break
            else:
                raise InputError(f"sequence {i}: no room for {int(presence[i].sum())} sites in {length} bp")
            minus = bool(rng.random() < 0.5)
            codes[i, at:at + w] = 3 - site[::-1] if minus else site  # 3 - code: the complement
            taken.append((at, at + w))
            rows.append((i, names[j] if names else int(j), at, at + w, "-" if minus else "+"))
    return pd.DataFrame(rows, columns=["seq", "motif", "start", "end", "strand"])


def decode(codes: np.ndarray) -> list[str]:
    """Base codes → strings."""
    return ["".join(row) for row in _BASES[codes]]


# ---------------------------------------------------------------------------------------------
# the cohort


class PlantedMotifs:
    """Subjects whose DNA carries a planted JASPAR motif (``carrier`` = yes) or not (no).

    Every subject has ``sequences_per_subject`` random sequences of ``length`` bp. In a
    carrier, a share ``carrier_share`` of them hold one site of ``motif``; controls hold none.
    Every sequence of every subject holds a site of each ``distractors`` motif with
    probability ``distractor_share``, so motifs that do not set the label are there in both
    groups. Half the subjects are carriers (drawn with ``seed``); age and sex are drawn
    independently of the label.

    ``distractors`` default: the demo model's other motifs (it detects those four).
    """

    def __init__(self, n_subjects: int = 24, sequences_per_subject: int = 8, motif: str = "MA0139.2",
                 distractors: list[str] | None = None, length: int = 256, carrier_share: float = 0.75,
                 distractor_share: float = 0.4, gc: float = 0.42, seed: int = 0):
        self.n_subjects = positive_int(n_subjects, "n_subjects")
        if self.n_subjects < 12:
            raise InputError(f"n_subjects={n_subjects}: need at least 12 (6 per group, what associate tests)")
        self.sequences_per_subject = positive_int(sequences_per_subject, "sequences_per_subject")
        self.length = positive_int(length, "length")
        for name, share in (("carrier_share", carrier_share), ("distractor_share", distractor_share)):
            if not 0 <= share <= 1:
                raise InputError(f"{name}={share}: expected a share between 0 and 1")
        self.motif, self.carrier_share, self.distractor_share = motif, carrier_share, distractor_share
        self.gc, self.seed = gc, int(seed)
        if distractors is None:
            from .demo import read_config

            distractors = [m["matrix_id"] for m in read_config()["motifs"] if m["matrix_id"] != motif]
        if motif in distractors:
            raise InputError(f"distractors: {motif} is the planted motif; a distractor must not set the label")
        self.distractors = list(distractors)
        for m in (motif, *self.distractors):  # an unknown ID is refused before any work
            jaspar_pfm(m)

    def build(self, folder) -> dict:
        """Write ``sequences.tsv`` (``seq_id, subject_id, sample_id, chrom, start, end, strand,
        sequence``: what :class:`SequenceAdapter` reads), ``clinical.csv`` (``subject_id,
        carrier, age, sex``) and ``truth.json`` into ``folder`` (made if missing); return the truth."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(self.seed)
        ids = [self.motif, *self.distractors]
        named = [jaspar_pfm(m) for m in ids]
        n_sub, per = self.n_subjects, self.sequences_per_subject
        subjects = [f"S{i + 1:03d}" for i in range(n_sub)]
        carrier = np.zeros(n_sub, dtype=bool)
        carrier[rng.permutation(n_sub)[:n_sub // 2]] = True
        n = n_sub * per
        subject_of = np.repeat(np.arange(n_sub), per)
        presence = np.zeros((n, len(ids)), dtype=bool)
        for s in np.flatnonzero(carrier):  # exactly round(share × per) sequences of each carrier
            rows = np.flatnonzero(subject_of == s)
            presence[rng.choice(rows, int(round(self.carrier_share * per)), replace=False), 0] = True
        presence[:, 1:] = rng.random((n, len(ids) - 1)) < self.distractor_share
        codes = random_dna(rng, n, self.length, self.gc)
        sites = plant(rng, codes, presence, [p for _, p in named], names=ids)
        seq_ids = [f"{subjects[s]}_seq{j + 1}" for s in range(n_sub) for j in range(per)]
        table = pd.DataFrame({"seq_id": seq_ids, "subject_id": [subjects[s] for s in subject_of],
                              "sample_id": [subjects[s] for s in subject_of], "chrom": seq_ids,
                              "start": 0, "end": self.length, "strand": "+", "sequence": decode(codes)})
        table.to_csv(folder / "sequences.tsv", sep="\t", index=False)
        clinical = pd.DataFrame({"subject_id": subjects, "carrier": np.where(carrier, "yes", "no"),
                                 "age": rng.integers(30, 80, n_sub), "sex": rng.choice(["F", "M"], n_sub)})
        clinical.to_csv(folder / "clinical.csv", index=False)
        sites.insert(0, "seq_id", [seq_ids[i] for i in sites.pop("seq")])
        truth = {
            "what": (f"{n_sub} subjects × {per} random {self.length}-bp sequences (GC {self.gc}); in the "
                     f"{int(carrier.sum())} carriers (carrier = yes) {int(round(self.carrier_share * per))} "
                     f"of {per} sequences hold a site sampled from {ids[0]} {named[0][0]}, in controls "
                     f"none; each distractor is planted in any sequence with probability "
                     f"{self.distractor_share}, whatever the label"),
            "label": "carrier", "case": "yes", "control": "no",
            "motif": {"matrix_id": ids[0], "name": named[0][0]},
            "distractors": [{"matrix_id": m, "name": nm} for m, (nm, _) in zip(ids[1:], named[1:])],
            "release": RELEASE, "seed": self.seed,
            "carriers": [s for s, c in zip(subjects, carrier) if c],
            "sites": sites.to_dict("records"),  # sequence coordinates (chrom = seq_id, from 0)
        }
        (folder / "truth.json").write_text(json.dumps(truth, indent=1))
        return truth

    def check(self, study, alpha: float = 0.05) -> tuple[bool, str]:
        """Recovered when a candidate feature of the planted label (association q < ``alpha``,
        higher in carriers) has the planted matrix as the top JASPAR match of its motif
        evidence; the line names the best-ranked such candidate, its rank, its q and the
        match's q."""
        study = Path(study)
        truth = json.loads(_need(study / "cohort" / "truth.json").read_text())
        want, name, label = truth["motif"]["matrix_id"], truth["motif"]["name"], truth["label"]
        what = f"DNA: the planted {name} motif ({want})"
        cand = pd.read_parquet(_need(study / "findings" / "candidates.parquet"))
        cand = cand[(cand["label"].astype(str) == label) & (cand["q"] < alpha)].sort_values("rank", kind="stable")
        cand = cand.drop_duplicates("feature")
        if cand.empty:
            return False, f"{what} not recovered — no candidate feature of {label} at q < {alpha:g}"
        # the motif is in the cases' DNA: its feature must be higher in them, not in the controls
        up = cand[cand["effect"] > 0]
        if up.empty:
            return False, (f"{what} not recovered — every candidate of {label} at q < {alpha:g} is lower in "
                           f"{truth['case']} than {truth['control']}")
        cand = up
        motifs_path = study / "interpretation" / "motifs.parquet"
        if not motifs_path.is_file():
            return False, f"{what} not recovered — the interpretation has no motifs table (interpret with model: true)"
        motifs = pd.read_parquet(motifs_path)
        top_hit = motifs[motifs["rank"] == 1].set_index("feature")
        for row in cand.itertuples():
            if row.feature in top_hit.index and top_hit.loc[row.feature, "matrix_id"] == want:
                hit = top_hit.loc[row.feature]
                return True, (f"{what} recovered — {row.feature} rank {int(row.rank)}, q = {row.q:.2g}, its "
                              f"motif {hit['consensus']} matches JASPAR {want} {hit['name']} "
                              f"(q = {hit['q']:.2g})")
        best = cand.iloc[0]
        seen = (f"its top JASPAR match is {top_hit.loc[best.feature, 'matrix_id']} "
                f"{top_hit.loc[best.feature, 'name']}" if best.feature in top_hit.index else "it has no motif")
        return False, (f"{what} not recovered — no interpreted candidate matches it; the best, {best.feature} "
                       f"(rank {int(best['rank'])}, q = {best.q:.2g}): {seen}")


def _need(path: Path) -> Path:
    if not path.is_file():
        raise InputError(f"{path} does not exist: run the study to the end first")
    return path
