"""Maps of SAE features over the original scans: what a clinician is shown for a volume feature.

For each feature, :func:`volume_evidence` gathers

* per-scan maps on the ORIGINAL scan grid (NIfTI, and a montage as PNG and SVG) for the scans
  where the feature's mean over the scan's rows is highest (the per-subject statistic
  ``bioviz.aggregate`` tests by default, and what the refined map attributes), with
  label-positive and label-negative scans among them:
  ``raw``, the feature's code on the layer's grid, upsampled and taken back through the
  inverse preprocessing (``VolumeAdapter.to_nifti``), and ``refined``, integrated gradients of
  the feature's code summed over the scan's rows, from the mean lesion-free scan, smoothed
  (``refine.py``). A coarse map ranks lesion voxels but rarely peaks on the lesion; the
  refined one keeps only what differs from healthy anatomy and moves the feature;
* agreement with the cohort's masks (Dice at the mask's volume, voxel AUROC, pointing game,
  peak distance: :func:`~bioviz.adapters.volume.map_agreement`);
* the peak of every map in voxels and in world mm (RAS), and the atlas region there when an
  atlas is given (:class:`Atlas`; no labelled atlas ships offline with nilearn or another
  installed package: nilearn's Harvard-Oxford, AAL and Talairach fetchers download);
* group means per label value, over scans that share one grid once reoriented to RAS (scans
  registered to a template); otherwise skipped, saying so.

Scored and peak-searched voxels are the scan's object: voxels above the scan's minimum
(MRI background is 0), so a map's value in the air around the head never wins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from bioviz.errors import InputError, positive_int
from bioviz.interpret.examples import read_columns, safe_name

__all__ = ["MAP_COLUMNS", "GROUP_COLUMNS", "KINDS", "Atlas", "read_atlas", "volume_evidence"]

KINDS = ("raw", "refined")
#: columns of the ``maps`` table (one row per feature × scan × kind)
MAP_COLUMNS = ("feature", "kind", "subject_id", "sample_id", "label", "label_value", "activation_mean",
               "activation_max", "peak_i", "peak_j", "peak_k", "peak_x_mm", "peak_y_mm", "peak_z_mm", "peak_value",
               "region", "dice", "voxel_auroc", "pointing_hit", "peak_distance_mm", "nifti",
               "montage", "montage_svg")
#: columns of the ``map_groups`` table (one row per feature × kind × label value)
GROUP_COLUMNS = ("feature", "kind", "label", "label_value", "n_scans", "n_masks", "peak_x_mm",
                 "peak_y_mm", "peak_z_mm", "peak_value", "region", "dice", "voxel_auroc",
                 "pointing_hit", "peak_distance_mm", "nifti", "montage", "montage_svg")
_GRID = ("sample_id", "grid_i", "grid_j", "grid_k", "voxel_i", "voxel_j", "voxel_k")
_AGREE = ("dice", "voxel_auroc", "pointing_hit", "peak_distance_mm")
_WHAT = {"raw": "the feature's activation (SAE code) upsampled from the layer's grid",
         "refined": "integrated gradients of the feature from the mean lesion-free scan"}
_MIN_OVERLAP = 0.5  # share of a scan's field of view that must lie in the atlas's


# -- atlas ----------------------------------------------------------------------------------


@dataclass
class Atlas:
    """A labelled atlas: integer labels on a grid with its affine, and a name per label.

    Regions are looked up at world coordinates (mm), so the atlas must be in the scans' world
    space: scans registered to the atlas's template (the phantom cohort is in MNI152 space).
    """

    labels: np.ndarray
    affine: np.ndarray
    names: dict[int, str]
    source: str

    @classmethod
    def read(cls, image, names) -> Atlas:
        """Read a label image (NIfTI path or nibabel image) and its names: a CSV/TSV path with
        ``index`` and ``name`` columns (or the first two columns), or a ``{label: name}`` dict."""
        import nibabel as nib

        source = str(image)
        if not hasattr(image, "dataobj"):
            path = Path(image)
            if not path.is_file():
                raise InputError(f"atlas image not found: {path}; give a label NIfTI (.nii/.nii.gz)")
            try:
                image = nib.load(str(path))
            except Exception as e:  # nibabel's errors for a file that is not an image
                raise InputError(f"atlas image {path}: cannot read it as NIfTI ({type(e).__name__}: "
                                 f"{str(e)[:150]})") from None
        data = np.asarray(image.dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise InputError(f"atlas image {source}: expected a 3D label volume, got shape {data.shape}")
        if not np.all(np.isfinite(data)) or not np.all(np.mod(data, 1) == 0):
            raise InputError(f"atlas image {source}: labels must be integers (a probabilistic atlas "
                             "needs thresholding into labels first)")
        return cls(data.astype(np.int64), np.asarray(image.affine, np.float64), _names(names), source)

    def region_at(self, xyz_mm) -> str | None:
        """The name of the label at world point ``xyz_mm``; None outside the atlas, on label
        0 without a name, or on a label the names table lacks."""
        ijk = np.rint(np.linalg.solve(self.affine, np.array([*xyz_mm, 1.0]))[:3]).astype(int)
        if np.any(ijk < 0) or np.any(ijk >= self.labels.shape):
            return None
        return self.names.get(int(self.labels[tuple(ijk)]))

    def overlap(self, shape, affine) -> float:
        """Share of a grid's world bounding box (``shape``, ``affine``) inside the atlas's."""
        lo, hi = _bbox(shape, affine)
        alo, ahi = _bbox(self.labels.shape, self.affine)
        inter = np.clip(np.minimum(hi, ahi) - np.maximum(lo, alo), 0, None).prod()
        return float(inter / max((hi - lo).prod(), 1e-9))


def read_atlas(atlas) -> Atlas | None:
    """``atlas`` as an :class:`Atlas`: None, an Atlas, ``(image, names)``, or
    ``{"image": ..., "names": ...}`` (see :meth:`Atlas.read`)."""
    if atlas is None or isinstance(atlas, Atlas):
        return atlas
    if isinstance(atlas, dict) and set(atlas) == {"image", "names"}:
        return Atlas.read(atlas["image"], atlas["names"])
    if isinstance(atlas, (tuple, list)) and len(atlas) == 2:
        return Atlas.read(*atlas)
    raise InputError(f"atlas: expected (label image, names table) or {{'image': ..., 'names': ...}}, "
                     f"got {type(atlas).__name__}")


def _names(names) -> dict[int, str]:
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    from bioviz.tables import TableError, read_table

    path = Path(names)
    try:
        t = read_table(path, what="atlas names table")
    except FileNotFoundError:
        raise InputError(f"atlas names table not found: {path}; give a CSV/TSV of label index and "
                         "name") from None
    except TableError as e:
        raise InputError(str(e)) from None
    cols = {str(c).strip().lower(): c for c in t.columns}
    key = next((cols[c] for c in ("index", "label", "id", "value") if c in cols), None)
    name = next((cols[c] for c in ("name", "region", "label_name") if c in cols and cols[c] != key), None)
    if key is None or name is None:
        if t.shape[1] < 2:
            raise InputError(f"atlas names table {path}: expected columns 'index' and 'name' (or two "
                             f"columns), got {list(t.columns)}")
        key, name = t.columns[:2]
    idx = pd.to_numeric(t[key], errors="coerce")
    if idx.isna().any() or not np.all(np.mod(idx, 1) == 0):
        raise InputError(f"atlas names table {path}: column {key!r} must hold integer labels")
    return {int(i): str(n) for i, n in zip(idx, t[name])}


def _bbox(shape, affine):
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape[:3]], indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ corners + affine[:3, 3:4]
    return world.min(1), world.max(1)


# -- the evidence ---------------------------------------------------------------------------


def volume_evidence(adapter, table, features, *, data=None, sae=None, subjects: pd.DataFrame | None = None,
                    label: str | None = None, reference=None, out=None, atlas=None, n_maps: int | None = 6, n_steps: int = 16,
                    sigma_vox: float = 1.5, signed: bool = False, n_baseline: int = 32,
                    figures: tuple[str, ...] = ("png", "svg"),
                    progress: bool = True) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Maps of SAE ``features`` over the original scans, their agreement with masks, their
    peaks, and group means by label (see the module docstring).

    Parameters
    ----------
    adapter : VolumeAdapter
        The adapter the rows came from (its model, preprocessing and inverse).
    table : anndata.AnnData or str
        The FeatureTable (rows as the volume adapter made them, with ``sample_id`` and the
        ``grid_*``/``voxel_*`` columns), or its path.
    features : list of str
        Feature names among the table's var names (``"f12"``).
    data
        The cohort the rows came from (manifest path, DataFrame or Cohort); default: the
        adapter's last one.
    sae : SparseAutoencoder or str, optional
        The SAE (or its folder): refined maps. Without it they are skipped.
    subjects : pandas.DataFrame, optional
        Per-subject clinical table, index ``subject_id`` (``Findings.subjects.obs``).
    label : str, optional
        Column of ``subjects`` (or of the rows' obs) grouping scans. Its control level (the
        non-case level of a binary label, else the first sorted level) gives the lesion-free
        scans of the refined maps' baseline; maps cover every level; groups are per level.
    reference : optional
        The control level of ``label`` when known (``interpret`` passes the Findings'
        contrast: ``case: AD`` makes CN the reference); default: inferred as above.
    out : str or Path, optional
        Folder for files (``maps/<feature>/...``); None writes nothing.
    atlas : optional
        A labelled atlas for the region at each peak (:func:`read_atlas`).
    n_maps : int or None
        Scans mapped per feature, shared out among the label levels in turn (in each level the
        scans where the feature's mean activation is highest first), then the rest by that
        mean; None maps every scan.
    n_steps, sigma_vox, signed
        Integrated-gradient steps, smoothing in voxels of the model grid, and whether to keep
        the attribution's sign (see :func:`~bioviz.adapters.volume.attribution_map`). 16 steps
        give the same smoothed maps as 32 on the phantom cohort (Dice within 0.003).
    n_baseline : int
        Lesion-free scans averaged into the baseline (the first by sample id).
    figures : tuple of str
        Montage formats written with ``out`` (``"png"``, ``"svg"``; empty: none).
    progress : bool
        Show progress bars.

    Returns
    -------
    tables : dict of str to DataFrame
        ``maps`` (:data:`MAP_COLUMNS`) and ``map_groups`` (:data:`GROUP_COLUMNS`).
    skipped : dict of str to str
        What could not be gathered and why: ``raw_maps``, ``refined_maps``,
        ``map_agreement``, ``map_region``, ``map_groups``, ``maps:<sample>``.
    """
    n_maps = None if n_maps is None else positive_int(n_maps, "n_maps")
    n_steps = positive_int(n_steps, "n_steps")
    n_baseline = positive_int(n_baseline, "n_baseline")
    bad = [f for f in figures if f not in ("png", "svg")]
    if bad:
        raise InputError(f"figures: {bad} not supported; expected 'png' and/or 'svg'")
    cols = read_columns(table, features, progress=False)
    obs = cols.obs
    missing = [c for c in _GRID if c not in obs]
    if missing:
        raise InputError(f"table: the rows lack columns {missing}; volume evidence needs a "
                         "FeatureTable of rows written by the volume adapter (grid and voxel indices)")
    cohort = adapter.read_cohort(data) if data is not None else adapter.cohort
    if cohort is None:
        raise InputError("data: the adapter has no cohort yet; pass data= (the manifest the rows came from)")
    samples = obs["sample_id"].astype(str).to_numpy()
    known = {s.sample_id for s in cohort.scans}
    strangers = sorted(set(samples) - known)
    if strangers:
        raise InputError(f"data: samples {strangers[:5]} of the FeatureTable are not in the cohort "
                         f"{cohort.source}; pass the manifest the rows came from")
    atlas = read_atlas(atlas)
    skipped: dict[str, str] = {}
    labels, levels, control = _labels(obs, samples, subjects, label, reference, skipped)
    pooled = bool((obs["grid_i"].to_numpy() < 0).all())
    if pooled:
        skipped["raw_maps"] = ("the rows are pooled per scan (layout='scan'): there is no activation "
                               "per location to map; extract with layout='spatial' for raw maps")
    refiner = _Refiner.make(adapter, cohort, sae, cols.features, table, labels, control, label,
                            n_baseline, dict(n_steps=n_steps, sigma_vox=float(sigma_vox), signed=bool(signed)),
                            skipped, progress)
    if pooled and refiner is None:
        skipped["maps"] = "neither raw nor refined maps can be made (see raw_maps and refined_maps)"
        return {}, skipped
    if not cohort.has_masks:
        skipped["map_agreement"] = (f"the cohort {cohort.source} has no masks (no {adapter.mask_col!r} "
                                    "column in the manifest): no Dice, AUROC or pointing game")
    if atlas is None:
        skipped["map_region"] = ("no atlas given (none ships offline with the installed packages): pass "
                                 "atlas=(label NIfTI, names CSV/TSV) in the scans' template space")
    out = Path(out) if out is not None else None
    by_sample = pd.Series(np.arange(len(samples))).groupby(samples).indices
    rows, groups = [], []
    for j, feature in enumerate(tqdm(cols.features, desc="feature maps", disable=not progress)):
        codes = cols.X[:, j].toarray().ravel()
        act = pd.DataFrame({"mean": [float(codes[i].mean()) for i in by_sample.values()],
                            "max": [float(codes[i].max()) for i in by_sample.values()]}, index=list(by_sample))
        picked = _pick(act["mean"], labels, levels, len(act) if n_maps is None else n_maps)
        ctx = _FeatureMaps(adapter, cohort, feature, label, atlas, out, figures, skipped)
        for sid in tqdm(picked, desc=f"{feature} maps", leave=False, disable=not progress):
            ctx.scan(sid, labels, act.loc[sid], None if pooled else (codes, obs, by_sample[sid]), refiner)
        rows += ctx.rows
        groups += ctx.groups(levels, skipped)
    return {"maps": _frame(rows, MAP_COLUMNS), "map_groups": _frame(groups, GROUP_COLUMNS)}, skipped


def _frame(rows, columns) -> pd.DataFrame:
    """Rows as a table with stable dtypes (missing values as NaN / <NA>, not None objects)."""
    t = pd.DataFrame(rows, columns=list(columns))
    for c in t.columns:
        if c in ("peak_i", "peak_j", "peak_k", "n_scans", "n_masks"):
            t[c] = t[c].astype("Int64")
        elif c == "pointing_hit" and columns is MAP_COLUMNS:
            t[c] = t[c].astype("boolean")
        elif c in ("activation_mean", "activation_max", "dice", "voxel_auroc", "pointing_hit",
                   "peak_distance_mm", "peak_value") or c.endswith("_mm"):
            t[c] = t[c].astype("float64")
        else:
            t[c] = t[c].astype("string")
    return t


def _labels(obs, samples, subjects, label, reference, skipped):
    """``(label per sample or None, levels or None, control level or None)``."""
    if label is None:
        skipped["map_groups"] = "no label given: no group maps"
        return None, None, None
    first = pd.Series(np.arange(len(samples))).groupby(samples).first()
    if subjects is not None and label in subjects.columns:
        subj = obs["subject_id"].astype(str).to_numpy()[first.to_numpy()]
        by_subject = subjects[label].copy()
        by_subject.index = by_subject.index.astype(str)
        values = pd.Series(by_subject.reindex(subj).to_numpy(), index=first.index)
    elif label in obs:
        values = pd.Series(obs[label].to_numpy()[first.to_numpy()], index=first.index)
    else:
        where = list(subjects.columns) if subjects is not None else list(obs.columns)
        raise InputError(f"label={label!r} is not a column of the subjects table or the rows "
                         f"(columns: {where[:20]})")
    from bioviz.analysis.clinical import reference_level

    try:
        kind, levels, control = reference_level(values, label, reference=reference)
    except InputError as e:
        skipped["map_groups"] = str(e)
        return values, None, None
    if kind == "continuous":
        skipped["map_groups"] = f"label {label!r} is continuous: no groups and no lesion-free reference level"
        return values, None, None
    return values, levels, control


def _pick(score: pd.Series, labels, levels, n: int) -> list[str]:
    """``n`` scans shared out among the label levels in turn, each level's highest ``score`` first,
    then the rest by ``score``: a feature that is lower in cases still gets case scans mapped (and
    scored against their masks), not only the controls where it is highest."""
    order = sorted(score.index, key=lambda s: (-score[s], s))
    of = {} if labels is None else {s: v for s, v in labels.items() if not pd.isna(v)}
    queues = [[s for s in order if s in of and of[s] == lv] for lv in levels or []]
    chosen: list[str] = []
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    chosen += [s for s in order if s not in chosen][:n - len(chosen)]
    return sorted(chosen, key=lambda s: (-score[s], s))


class _Refiner:
    """What refined maps need, made once: the SAE on the model, its layer, the baseline."""

    def __init__(self, adapter, cohort, sae, layer, baseline, index, kwargs):
        self.adapter, self.cohort, self.sae, self.layer = adapter, cohort, sae, layer
        self.baseline, self.index, self.kwargs = baseline, index, kwargs

    @classmethod
    def make(cls, adapter, cohort, sae, features, table, labels, control, label, n_baseline, kwargs,
             skipped, progress):
        why = cls._why_not(adapter, sae, labels, control, label)
        if why:
            skipped["refined_maps"] = why
            return None
        from bioviz.provenance import on_model
        from bioviz.sae import load_sae

        from .refine import healthy_baseline

        sae = load_sae(sae) if isinstance(sae, (str, os.PathLike)) else sae
        layer = ((getattr(table, "uns", None) or {}).get("bioviz") or {}).get("layer")
        where, _, _, sae = on_model(sae, adapter, layer)
        index = {f: int(f[1:]) for f in features if f[:1] == "f" and f[1:].isdigit() and int(f[1:]) < sae.d_sae}
        if len(index) < len(features):
            skipped["refined_maps"] = (f"features {[f for f in features if f not in index][:5]} are not SAE "
                                       f"latents 'f<i>' with i < {sae.d_sae}: no refined maps for them")
        in_cohort = {s.sample_id for s in cohort.scans}
        ref = sorted(s for s, v in labels.items() if not pd.isna(v) and v == control
                     and s in in_cohort)[:n_baseline]
        if not ref:
            skipped["refined_maps"] = (f"no scan has the control level {label}={control!r} in the "
                                       "cohort: no lesion-free baseline")
            return None
        try:
            baseline = healthy_baseline(adapter, ref, data=cohort, progress=progress)
        except InputError as e:
            skipped["refined_maps"] = f"no lesion-free baseline: {e}"
            return None
        return cls(adapter, cohort, sae, where.layer, baseline, index, kwargs)

    @staticmethod
    def _why_not(adapter, sae, labels, control, label) -> str | None:
        if sae is None:
            return "no SAE given (sae=): refined maps attribute the feature through the model"
        if getattr(adapter, "windows", None) is not None:
            return (f"the adapter runs sliding windows (roi_size={list(adapter.windows.roi)}): refined maps "
                    "attribute through one forward pass of the whole scan")
        if labels is None or control is None:
            return (f"no lesion-free reference: refined maps integrate from the mean scan of the label's "
                    f"control level; give subjects= and a binary or categorical label= (label={label!r})")
        return None

    def array(self, feature, scan, pp):
        """The refined map of ``feature`` on ``scan``'s original grid (None: not an SAE latent)."""
        from .refine import feature_target, refined_array

        if feature not in self.index:
            return None
        fn = feature_target(self.adapter, self.sae, self.layer, self.index[feature], scan,
                            data=self.cohort, prepared=pp)
        return refined_array(self.adapter, pp, self.baseline, target=fn, **self.kwargs)


class _FeatureMaps:
    """One feature's maps: rows of the ``maps`` table, files, and the sums for group means."""

    def __init__(self, adapter, cohort, feature, label, atlas, out, figures, skipped):
        self.adapter, self.cohort, self.feature, self.label = adapter, cohort, feature, label
        self.atlas, self.figures, self.skipped = atlas, figures, skipped
        self.dir = out / "maps" / safe_name(feature) if out is not None else None
        self.out = out
        self.rows: list[dict] = []
        self.sums: dict = {}  # (kind, value) → [map sum, n, rows]; ("anatomy", value) → [sum, n, mask sum]
        self.grid = None  # the common RAS grid (shape, affine), or False once two differ

    def scan(self, sid, labels, act, raw, refiner):
        import nibabel as nib

        from .io import ScanError, load_scan
        from .maps import _to_original

        scan = self.cohort.find(sid)
        value = labels.get(sid) if labels is not None else None
        value = None if value is None or pd.isna(value) else value
        try:
            maps = {}
            if raw is not None:
                codes, obs, idx = raw
                img, pp, _ = _to_original(self.adapter, codes[idx], obs.iloc[idx], sid, self.cohort, "linear")
                maps["raw"] = np.asarray(img.dataobj, np.float32)
            else:
                pp = self.adapter.prepare_scan(scan)
            if refiner is not None:
                arr = refiner.array(self.feature, scan, pp)
                if arr is not None:
                    maps["refined"] = arr
            mask = None
            if scan.mask is not None:
                mask = np.asarray(load_scan(scan.mask, "mask").numpy() > 0)
        except ScanError as e:
            self.skipped[f"maps:{sid}"] = str(e)
            return
        anat = np.asarray(pp["original"].cpu().numpy(), np.float32)
        affine = np.asarray(pp["original"].affine, np.float64)
        head = anat > anat.min()
        anat_img = nib.Nifti1Image(anat, affine)
        mask_img = nib.Nifti1Image(mask.astype(np.uint8), affine) if mask is not None else None
        region_ok = self._region_ok(sid, anat.shape, affine)
        self._add_anatomy(value, anat_img, mask_img)
        for kind, arr in maps.items():
            img = nib.Nifti1Image(arr, affine)
            row = {"feature": self.feature, "kind": kind, "subject_id": scan.subject_id, "sample_id": sid,
                   "label": self.label, "label_value": None if value is None else str(value),
                   "activation_mean": float(act["mean"]), "activation_max": float(act["max"])}
            row.update(self._peak(arr, head, affine, region_ok))
            row.update(_agreement(img, mask_img, head) if mask_img is not None else dict.fromkeys(_AGREE))
            if row["peak_value"] is None and row["pointing_hit"] is not None:
                row["pointing_hit"], row["peak_distance_mm"] = False, None  # a silent map points nowhere
            title = (f"{self.feature}, {kind} map: {_WHAT[kind]}\n{sid}"
                     + (f" ({self.label}={value})" if value is not None else ""))
            row.update(self._write(img, anat_img, mask_img, head, f"{safe_name(sid)}_{kind}", title,
                                   silent=row["peak_value"] is None))
            self.rows.append(row)
            self._add_map(kind, value, img, row)

    # -- pieces ----------------------------------------------------------------------------

    def _region_ok(self, sid, shape, affine) -> bool:
        if self.atlas is None:
            return False
        share = self.atlas.overlap(shape, affine)
        if share < _MIN_OVERLAP:
            self.skipped["map_region"] = (
                f"scan {sid} lies {100 * (1 - share):.0f}% outside the atlas {self.atlas.source}: it is "
                "not in the atlas's space; register the scans to the atlas's template first")
            return False
        return True

    def _peak(self, arr, within, affine, region_ok) -> dict:
        vals = np.where(within & np.isfinite(arr), arr, -np.inf)
        p = np.unravel_index(int(np.argmax(vals)), arr.shape)
        if not vals[p] > 0:  # a feature silent in this scan has no peak
            return {**dict.fromkeys(("peak_i", "peak_j", "peak_k", "peak_x_mm", "peak_y_mm", "peak_z_mm",
                                     "peak_value", "region"))}
        xyz = (affine @ np.array([*p, 1.0]))[:3]
        return {"peak_i": int(p[0]), "peak_j": int(p[1]), "peak_k": int(p[2]),
                "peak_x_mm": float(xyz[0]), "peak_y_mm": float(xyz[1]), "peak_z_mm": float(xyz[2]),
                "peak_value": float(arr[p]), "region": self.atlas.region_at(xyz) if region_ok else None}

    def _write(self, img, anat_img, mask_img, head, stem, title, silent) -> dict:
        import nibabel as nib

        from .montage import montage

        paths = dict.fromkeys(("nifti", "montage", "montage_svg"))
        if self.dir is None:
            return paths
        self.dir.mkdir(parents=True, exist_ok=True)
        nii = self.dir / f"{stem}.nii.gz"
        # stored as int16 with NIfTI's scale and offset (resolution: 1/65535 of the map's range):
        # smooth float32 maps barely compress, ~3 MB a scan, and a study writes hundreds
        small = nib.Nifti1Image(np.asarray(img.dataobj, np.float32), img.affine, img.header)
        small.set_data_dtype(np.int16)
        nib.save(small, str(nii))
        paths["nifti"] = nii.relative_to(self.out).as_posix()
        # the figure shows the map inside the head only: a coarse map's values in the air (the
        # padding the network saw) would take the montage's slices away from the table's peak
        arr = np.asarray(img.dataobj, np.float32)
        shown = nib.Nifti1Image(np.where(head, arr, arr[head].min() if head.any() else 0), img.affine)
        # a silent map has nothing to overlay: a threshold above it draws the anatomy alone
        thr = 1.0 if silent else None
        for fmt, key in (("png", "montage"), ("svg", "montage_svg")):
            if fmt in self.figures:
                path = montage(anat_img, shown, self.dir / f"{stem}.{fmt}", mask=mask_img, title=title,
                               threshold=thr)
                paths[key] = path.relative_to(self.out).as_posix()
        return paths

    def _ras(self, img):
        """``img`` reoriented to RAS, and whether it shares the grid of the maps so far."""
        import nibabel as nib

        c = nib.as_closest_canonical(img)
        grid = (c.shape[:3], np.asarray(c.affine))
        if self.grid is None:
            self.grid = grid
        elif self.grid is not False and (grid[0] != self.grid[0] or not np.allclose(grid[1], self.grid[1], atol=1e-3)):
            self.grid = False
        return c

    def _add_anatomy(self, value, anat_img, mask_img):
        if value is None:
            return
        a = np.asarray(self._ras(anat_img).dataobj, np.float64)
        k = np.asarray(self._ras(mask_img).dataobj, np.float64) if mask_img is not None else None
        s = self.sums.setdefault(("anatomy", value), [0.0, 0, 0.0, 0])
        if self.grid is False:
            return
        s[0] = s[0] + a
        s[1] += 1
        if k is not None:
            s[2], s[3] = s[2] + k, s[3] + 1

    def _add_map(self, kind, value, img, row):
        if value is None:
            return
        m = np.asarray(self._ras(img).dataobj, np.float64)
        s = self.sums.setdefault((kind, value), [0.0, 0, []])
        if self.grid is not False:
            s[0] = s[0] + m
        s[1] += 1
        s[2].append(row)

    def groups(self, levels, skipped) -> list[dict]:
        """Rows of ``map_groups`` (and their files); none when the scans' grids differ."""
        import nibabel as nib

        if not levels or not self.sums:
            return []
        if self.grid is False:
            skipped["map_groups"] = (f"the scans mapped for {self.feature} are on different grids (shape or "
                                     "affine after reorientation to RAS): register the scans to a template "
                                     "first for group maps")
            return []
        shape, affine = self.grid
        out = []
        for kind in KINDS:
            for value in levels:
                if (kind, value) not in self.sums:
                    continue
                total, n, members = self.sums[(kind, value)]
                a_sum, a_n, k_sum, k_n = self.sums[("anatomy", value)]
                mean = (total / n).astype(np.float32)
                img = nib.Nifti1Image(mean, affine)
                anat = nib.Nifti1Image((a_sum / a_n).astype(np.float32), affine)
                # where at least half of the group's lesions lie: the typical lesion's outline
                mask = nib.Nifti1Image((k_sum / k_n >= 0.5).astype(np.uint8), affine) if k_n else None
                if mask is not None and not np.asarray(mask.dataobj).any():
                    mask = None
                head = np.asarray(anat.dataobj) > np.asarray(anat.dataobj).min()
                region_ok = self.atlas is not None and self.atlas.overlap(shape, affine) >= _MIN_OVERLAP
                row = {"feature": self.feature, "kind": kind, "label": self.label, "label_value": str(value),
                       "n_scans": n, "n_masks": sum(r["dice"] is not None for r in members)}
                peak = self._peak(mean, head, affine, region_ok)
                row.update({k: peak[k] for k in ("peak_x_mm", "peak_y_mm", "peak_z_mm", "peak_value", "region")})
                for k in _AGREE:
                    vals = [float(r[k]) for r in members if r[k] is not None]
                    row[k] = float(np.mean(vals)) if vals else None
                stem = f"group_{safe_name(str(self.label))}-{safe_name(str(value))}_{kind}"
                title = (f"{self.feature}, {kind} map: {_WHAT[kind]}\nmean of {n} scan(s) with "
                         f"{self.label}={value}")
                row.update(self._write(img, anat, mask, head, stem, title, silent=peak["peak_value"] is None))
                out.append(row)
        return out


def _agreement(img, mask_img, head) -> dict:
    from .agreement import map_agreement

    try:
        a = map_agreement(img, mask_img, within=head)
    except InputError:  # an empty mask (or one covering the whole head) scores nothing
        return dict.fromkeys(_AGREE)
    return {"dice": a["dice"], "voxel_auroc": a["auroc"], "pointing_hit": a["pointing_hit"],
            "peak_distance_mm": a["peak_distance_mm"]}
