"""The 3D-scan demo study's cohort: the MNI152 phantom with planted lesions (``bioviz run``'s
``cohort:`` section; config ``experiments/studies/phantom_lesions.yaml``).

:class:`PhantomLesions` writes a :func:`~bioviz.adapters.volume.make_brain_cohort` cohort
(NIfTI scans, lesion masks, ``manifest.csv``), the clinical table the association reads and
the planted truth, and afterwards judges from the study's own outputs whether the lesion
feature was found: a candidate whose refined maps (integrated gradients through the model,
on each subject's original grid) overlap the lesion masks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from bioviz.errors import InputError

#: the label column of ``clinical.csv`` and its levels, worded for the report ("higher in lesion
#: than control"); the study's config names the case level
LABEL, CASE, CONTROL = "diagnosis", "lesion", "control"
#: recovered when the best refined map's mean Dice over lesion scans reaches this, with q below ALPHA
MIN_DICE, ALPHA = 0.5, 0.05


class PhantomLesions:
    """A brain-MRI-like cohort from the MNI152 template: half the subjects carry a lesion
    (a darker soft ball in the right hemisphere's white matter), scanned at three sites
    that differ in intensity and storage orientation; age and sex vary.

    Parameters
    ----------
    n_subjects, seed, voxel_mm, positive_fraction
        Passed to :func:`~bioviz.adapters.volume.make_brain_cohort` (seed 12 is not the demo
        model's training cohort, seed 20240).
    lesion_centre_mm, lesion_radius_mm, lesion_contrast, lesion_jitter_mm
        The planted lesion (MNI mm, RAS; contrast -0.45 = 45% darker; per-subject jitter).
    progress
        A progress bar over the scans written.
    """

    def __init__(self, n_subjects: int = 16, seed: int = 12, voxel_mm: float = 2.0,
                 positive_fraction: float = 0.5, lesion_centre_mm: list[float] = (28.0, -18.0, 22.0),
                 lesion_radius_mm: float = 9.0, lesion_contrast: float = -0.45, lesion_jitter_mm: float = 3.0,
                 progress: bool = True):
        centre = [float(v) for v in lesion_centre_mm]
        if len(centre) != 3:
            raise InputError(f"lesion_centre_mm={lesion_centre_mm!r}: expected three numbers (x, y, z in MNI mm)")
        self.n_subjects, self.seed, self.voxel_mm = int(n_subjects), int(seed), float(voxel_mm)
        self.positive_fraction, self.lesion_centre_mm = float(positive_fraction), centre
        self.lesion_radius_mm, self.lesion_contrast = float(lesion_radius_mm), float(lesion_contrast)
        self.lesion_jitter_mm, self.progress = float(lesion_jitter_mm), bool(progress)

    # -- build ----------------------------------------------------------------------------

    def build(self, folder: Path) -> dict:
        """Write the cohort into ``folder`` (empty): ``manifest.csv`` (what the adapter reads),
        ``images/``, ``masks/``, ``cohort.json``, ``clinical.csv`` and ``truth.json``; return the truth."""
        from .phantom import make_brain_cohort

        folder = Path(folder)
        manifest = make_brain_cohort(
            folder, self.n_subjects, seed=self.seed, voxel_mm=self.voxel_mm,
            positive_fraction=self.positive_fraction, lesion_centre_mm=tuple(self.lesion_centre_mm),
            lesion_radius_mm=self.lesion_radius_mm, lesion_contrast=self.lesion_contrast,
            lesion_jitter_mm=self.lesion_jitter_mm, progress=self.progress)
        table = pd.read_csv(manifest, dtype={"subject_id": str})
        # the label a clinician reads (diagnosis = lesion / control), from the generator's 0/1 column
        clinical = pd.DataFrame({"subject_id": table["subject_id"],
                                 LABEL: table["label"].map({1: CASE, 0: CONTROL}),
                                 "age": table["age"], "sex": table["sex"], "site": table["site"]})
        clinical.to_csv(folder / "clinical.csv", index=False)
        truth = _truth(json.loads((folder / "cohort.json").read_text()), table)
        (folder / "truth.json").write_text(json.dumps(truth, indent=1))
        return truth

    # -- check ----------------------------------------------------------------------------

    def check(self, study: Path) -> tuple[bool, str]:
        """Whether the finished ``study`` found the planted lesions, as one line.

        Among the candidates ``interpret`` explained, the one whose refined maps agree best
        with the lesion masks (mean Dice over the lesion scans mapped, from
        ``interpretation/maps.parquet``); recovered when that Dice is at least 0.5 and the
        candidate's association q (``findings/candidates.parquet``) is below 0.05.
        """
        from bioviz.analysis import Findings
        from bioviz.interpret import Interpretation

        study = Path(study)
        cand = Findings.read(study / "findings").candidates
        interp = Interpretation.read(study / "interpretation")
        maps = interp.tables.get("maps")
        if maps is None or not len(maps):
            return False, ("3D scans: planted lesions NOT recovered — the interpretation has no maps "
                           "(interpret needs model: true to map features onto the scans)")
        cand = cand[cand["label"].astype(str) == LABEL]
        lesion = maps[(maps["kind"] == "refined") & (maps["label"] == LABEL)
                      & (maps["label_value"] == CASE) & maps["dice"].notna()]
        if not len(lesion):
            return False, ("3D scans: planted lesions NOT recovered — no refined map of a lesion scan "
                           "with a mask among the candidates explained")
        per = lesion.groupby("feature").agg(dice=("dice", "mean"), point=("pointing_hit", "mean"),
                                            n=("dice", "size"))
        best = per.sort_values(["dice", "point"], ascending=False, kind="stable").index[0]
        row = cand[cand["feature"] == best].sort_values("rank").head(1)
        dice, point, n = float(per.loc[best, "dice"]), float(per.loc[best, "point"]), int(per.loc[best, "n"])
        rank = int(row["rank"].iloc[0]) if len(row) else None
        q = float(row["q"].iloc[0]) if len(row) else math.nan
        ok = rank is not None and dice >= MIN_DICE and q < ALPHA
        where = (f"{best} rank {rank}, q = {q:.2g}" if rank is not None
                 else f"{best} (not a candidate at q < {ALPHA})")
        verdict = "recovered the planted lesions" if ok else "planted lesions NOT recovered"
        return ok, (f"3D scans: {verdict} — {where}, refined-map Dice {dice:.2f} with the masks over "
                    f"{n} lesion scan{'s' * (n != 1)} (pointing game {100 * point:.0f}%)")


def _truth(info: dict, table: pd.DataFrame) -> dict:
    """The planted truth, documented: who carries a lesion and where, what the sites and
    covariates do to the scans (from the generator's own record, ``cohort.json``)."""
    per = {d["subject_id"]: d for d in info["subjects"]}
    carriers = table[table["label"] == 1]
    return {
        "about": ("MNI152 phantom cohort (make_brain_cohort): each scan is the nilearn MNI152 template "
                  "warped by a smooth random deformation, with a bias field, scanner gain and noise. "
                  f"Subjects with {LABEL} = {CASE} carry one planted lesion; the study should find an "
                  "SAE feature that separates them and whose refined map lands on the lesion masks."),
        "label": {"column": LABEL, "case": CASE, "control": CONTROL,
                  "source": f"manifest.csv column 'label' (1 = lesion), written as {CASE}/{CONTROL} in clinical.csv"},
        "lesion": {"centre_mm": info["lesion_centre_mm"], "radius_mm": info["lesion_radius_mm"],
                   "contrast": info["lesion_contrast"], "jitter_mm": info["lesion_jitter_mm"],
                   "what": ("a soft ball (3 mm edge) whose intensity is changed by 'contrast' (relative; "
                            "negative = darker, like a T1 hypointensity), centred at 'centre_mm' in MNI "
                            "space moved by N(0, jitter_mm) per subject and warped with the subject's "
                            "anatomy; the mask (masks/, manifest column 'mask') is the ball inside the brain. Per "
                            "subject in lesion_subjects: the mask file, the centre in the subject's own "
                            "scan (world mm, RAS) and the mask's voxel count")},
        "lesion_subjects": [{"subject_id": s, "mask": m, "centre_mm": per[s]["lesion_centre_mm"],
                             "voxels": per[s]["lesion_voxels"]}
                            for s, m in zip(carriers["subject_id"], carriers["mask"])],
        "sites": info["sites"],
        "site_effect": ("each site scales intensity by 'gain' and adds 'offset' inside the brain; site-B "
                        "stores scans with the first axis flipped (LAS); site is drawn independently of "
                        "the lesion, age and sex"),
        "covariates": {
            "age": "uniform 40-85 years; older brains are smaller (0.3% per year around 62 years)",
            "sex": "F or M at random; no effect on the scan",
            "site": "see site_effect"},
        "scans": {"n_subjects": info["n_subjects"], "voxel_mm": info["voxel_mm"], "shape": info["shape"],
                  "seed": info["seed"], "deformation_mm": info["deformation_mm"], "noise": info["noise"]},
    }
