"""The volume adapter: a MONAI network over a NIfTI/DICOM cohort, one activation row per
location of a hooked layer's grid, each row placed on the scan in voxels and in mm.

    adapter = VolumeAdapter({"class_path": "monai.networks.nets.SegResNet", "init_args": {...}},
                            weights="model.safetensors", preprocess="mri", roi_size=96)
    store = bioviz.extract(adapter, "cohort/manifest.csv", "down_layers.3", "store/")
    adapter.write_map(store.array()[:, 7], store.obs, "sub-003", "sub-003_f7.nii.gz")

Row obs: the manifest's ``subject_id``, ``sample_id`` and clinical columns, then
  * ``grid_i, grid_j, grid_k``: the cell's index on the layer's grid (after patch pooling);
  * ``voxel_i, voxel_j, voxel_k``: the cell's centre in voxels of the preprocessed image;
  * ``world_x, world_y, world_z``: that centre in mm, scanner (RAS+) coordinates, through the
    preprocessed image's affine, which MONAI keeps through every transform;
  * ``mask_fraction`` (when the manifest has masks): the share of the cell inside the mask.

Volumes larger than ``roi_size`` run in sliding windows, and the hooked layers are stitched
window by window (``windows.py``); scans of different shapes in one batch run one by one.
Both happen inside :meth:`VolumeAdapter.run`, the protocol's one way of running the model,
so extraction, fidelity and interventions get windows (and splicing inside them) alike.
The array axes i, j, k are the preprocessed image's voxel axes (after ``Orientationd`` to
RAS, i runs left→right, j posterior→anterior, k inferior→superior). With
``layout="scan"`` each scan gives one row, the mean over its grid, with grid indices -1 and
the grid's centre as its position.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from bioviz.adapter import Adapter, Batch, Run
from bioviz.checksum import digest, file_checksum
from bioviz.errors import InputError, positive_int
from bioviz.hooks import hooked, resolve_layers

from .cohort import Cohort
from .io import ScanError, check_same_grid, load_scan
from .networks import (
    STRIP_PREFIXES,
    build_network,
    default_divisor,
    hook_points,
    load_weights,
    read_bundle,
    tokens_to_grid,
)
from .preprocess import build_chain, chain_spec, run_chain
from .windows import BLEND, WindowSpec, padded_shape, stitch

log = logging.getLogger(__name__)
LAYOUTS = ("spatial", "scan")
ON_BAD = ("skip", "raise")


@dataclass
class ScanInfo:
    """What ``rows`` needs about one item of a batch (travels in ``Batch.extra``)."""

    index: int
    sample_id: str
    file: str
    shape: tuple  # preprocessed grid
    padded: tuple  # what the model saw (padded at the far end of each axis)
    affine: np.ndarray  # preprocessed voxel → world (mm)
    mask: torch.Tensor | None  # [1, *padded], or None
    error: str | None = None
    row: int | None = None  # 1-based data row of the manifest


class VolumeAdapter(Adapter):
    """Adapter for CT/MRI volumes and MONAI networks (see the module docstring)."""

    name = "volume"

    def __init__(self, network: nn.Module | dict | str | None = None, *, weights: str | None = None,
                 bundle: str | None = None, preprocess: str | dict | list | None = None,
                 roi_size: int | list[int] | None = None, overlap: float | None = None,
                 blend: str | None = None, sigma_scale: float = 0.125, sw_batch_size: int = 1,
                 divisor: int | None = None, patch: int | list[int] = 1, layout: str = "spatial",
                 on_bad_scan: str = "skip", strip_prefixes: tuple[str, ...] = STRIP_PREFIXES,
                 allow_missing: tuple[str, ...] = (), allow_unexpected: tuple[str, ...] = (),
                 allow_outside: bool = False, image_col: str = "image", mask_col: str = "mask",
                 model_name: str | None = None, atlas=None, maps: int | None = 6):
        """
        Parameters
        ----------
        network : dict, str or nn.Module, optional
            A MONAI network config (``{"class_path": ..., "init_args": ...}``, a class name in
            monai.networks.nets) or an ``nn.Module``. Not needed with ``bundle``.
        weights : str, optional
            Local ``.safetensors`` or state-dict file (read with weights_only=True).
        bundle : str, optional
            A MONAI bundle directory (configs/inference.json + models/model.pt or
            model.safetensors); gives the network, weights, preprocessing and window.
        preprocess : str, dict or list, optional
            ``"ct"``, ``"mri"``, a preset dict with overrides, or a list of MONAI dictionary
            transforms (see ``preprocess.py``). Default: the bundle's, else ``"mri"``.
        roi_size : int or list of int, optional
            Sliding-window size; None runs each volume whole.
        overlap : float, optional
            Overlap of neighbouring windows (default 0.25).
        blend : str, optional
            How overlapping windows are blended: ``constant`` or ``gaussian``.
        sigma_scale : float
            Width of the Gaussian blending weights.
        sw_batch_size : int
            Windows per forward pass.
        divisor : int, optional
            Every input side is padded to a multiple of this (default: the network's total
            stride), so layer grids line up with voxels.
        patch : int or list of int
            Pool this many cells per axis into one row (``2`` → 2×2×2 patches).
        layout : str
            ``spatial`` (one row per location) or ``scan`` (one pooled row per scan).
        on_bad_scan : str
            ``skip`` (log and count unreadable/invalid scans, keep going) or ``raise``.
        strip_prefixes : tuple of str
            Prefixes that wrappers put on every checkpoint key (``module.``), stripped.
        allow_missing : tuple of str
            Key prefixes the checkpoint may lack (a head it never had).
        allow_unexpected : tuple of str
            Key prefixes the checkpoint may hold that the network lacks (a projection head).
        allow_outside : bool
            Let manifest paths leave the manifest's folder.
        image_col : str
            Manifest column holding the image paths.
        mask_col : str
            Manifest column holding the mask paths.
        model_name : str, optional
            Name recorded in the store's manifest (default: the bundle folder's name).
        atlas : optional
            A labelled atlas in the scans' template space for the region at each map's peak in
            :meth:`evidence`: ``(label NIfTI, names CSV/TSV)`` or an ``evidence.Atlas``. It
            changes no activation, so it is not part of :meth:`config`.
        maps : int or None
            Scans mapped per feature in :meth:`evidence`, shared out among the label levels;
            None maps every scan (each refined map costs one integrated-gradients pass). Not
            part of :meth:`config` either.
        """
        if layout not in LAYOUTS:
            raise InputError(f"layout={layout!r}: expected one of {LAYOUTS}")
        if on_bad_scan not in ON_BAD:
            raise InputError(f"on_bad_scan={on_bad_scan!r}: expected one of {ON_BAD}")
        inferer = {}
        if bundle is not None:
            b = read_bundle(bundle)
            network = b.network_spec if network is None else network
            weights = str(b.weights) if weights is None else weights
            preprocess = b.preprocess if preprocess is None else preprocess
            inferer = b.inferer
            model_name = model_name or Path(bundle).name
        if network is None:
            raise InputError("network: give a MONAI network config, an nn.Module, or bundle=")
        self._model = build_network(network).eval()
        self.weights_report = None
        if weights is not None:
            self.weights_report = load_weights(self._model, weights, strip_prefixes=strip_prefixes,
                                               allow_missing=allow_missing, allow_unexpected=allow_unexpected)
            log.info("%s", self.weights_report)
        self.model_name = model_name
        self.maps = None if maps is None else positive_int(maps, "maps")
        self.preprocess = chain_spec(preprocess)
        self.chain = build_chain(self.preprocess)
        roi_size = roi_size if roi_size is not None else inferer.get("roi_size")
        self.divisor = int(divisor or default_divisor(self._model))
        self.windows = None
        if roi_size is not None:
            roi = tuple(int(v) for v in ([roi_size] * 3 if isinstance(roi_size, int) else roi_size))
            if len(roi) != 3 or any(r < 1 or r % self.divisor for r in roi):
                raise InputError(f"roi_size={roi_size!r}: expected 3 sides, each a multiple of divisor={self.divisor}")
            blend = blend or inferer.get("mode", "constant")
            if blend not in BLEND:
                raise InputError(f"blend={blend!r}: expected one of {BLEND}")
            overlap = float(overlap if overlap is not None else inferer.get("overlap", 0.25))
            if not 0 <= overlap < 1:
                raise InputError(f"overlap={overlap}: expected 0 <= overlap < 1")
            self.windows = WindowSpec(roi, overlap, blend, float(sigma_scale),
                                      int(inferer.get("sw_batch_size", sw_batch_size)))
        self.patch = tuple(int(v) for v in ([patch] * 3 if isinstance(patch, int) else patch))
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise InputError(f"patch={patch!r}: expected a positive int or 3 positive ints")
        self.layout, self.on_bad_scan = layout, on_bad_scan
        self.allow_outside, self.image_col, self.mask_col = allow_outside, image_col, mask_col
        from .evidence import read_atlas

        self.atlas = read_atlas(atlas)  # read now: a missing file is an error here, not after extraction
        self.cohort: Cohort | None = None
        self.skipped: list[dict] = []
        self._in_channels = next((m.in_channels for m in self._model.modules() if isinstance(m, nn.Conv3d)), 1)

    # -- Adapter protocol --------------------------------------------------------------------

    @property
    def model(self) -> nn.Module:
        return self._model

    def layer_names(self) -> list[str]:
        first = hook_points(self._model)
        return first + [n for n, _ in self._model.named_modules() if n and n not in first]

    def read_cohort(self, data) -> Cohort:
        if isinstance(data, Cohort):
            return data
        return Cohort.read(data, image_col=self.image_col, mask_col=self.mask_col,
                           allow_outside=self.allow_outside,
                           on_missing="skip" if self.on_bad_scan == "skip" else "raise")

    def dataset(self, data) -> torch.utils.data.Dataset:
        """``data``: a manifest path (CSV/TSV/parquet), a DataFrame (paths relative to the
        working directory) or a :class:`Cohort`."""
        self.cohort = self.read_cohort(data)
        self.skipped = list(self.cohort.skipped)
        return _Scans(self, self.cohort)

    def collate(self, items: list) -> Batch:
        meta = self.cohort.meta([it.index for it in items])
        infos, tensors = [], []
        for it in items:
            if it.error:
                infos.append(ScanInfo(it.index, it.sample_id, it.file, (), (), np.eye(4), None, it.error, it.row))
                tensors.append(torch.zeros(0))
                continue
            shape = tuple(it.image.shape[1:])
            padded = padded_shape(shape, self.divisor, self.windows.roi if self.windows else None)
            pads = [p for s, t in zip(reversed(shape), reversed(padded)) for p in (0, t - s)]
            mask = F.pad(it.mask, pads) if it.mask is not None else None
            infos.append(ScanInfo(it.index, it.sample_id, it.file, shape, padded, it.affine, mask, row=it.row))
            tensors.append(F.pad(it.image, pads))
        same = len({t.shape for t in tensors}) == 1 and all(i.error is None for i in infos)
        # one batched forward when every scan has the same grid and no windows are needed
        inputs = torch.stack(tensors) if same and self.windows is None else tensors
        return Batch(inputs, meta, {"scans": infos})

    def run(self, batch: Batch, layers=(), *, inputs: bool = False, select=None, splice=None) -> Run:
        """As :meth:`Adapter.run`; scans that cannot share one forward pass run one by one,
        and with ``roi_size`` each scan runs window by window, the layers (and a spatial
        output) stitched with the windows' blending weights and ``splice`` applied inside
        every window. The output and each activation are then lists with one entry per scan
        of the batch (``None`` for a skipped scan)."""
        infos = batch.extra["scans"]
        for info in infos:
            if info.error:
                self._note_skip(info)
        if isinstance(batch.inputs, torch.Tensor):  # one batched pass (collate decided)
            return super().run(batch, layers, inputs=inputs, select=select, splice=splice)
        names = resolve_layers(self.model, layers) if layers else []
        acts = {n: [None] * len(infos) for n in names}
        outs = [None] * len(infos)
        for k, info in enumerate(infos):
            if info.error:
                continue
            x = batch.inputs[k][None]
            if self.windows is not None:
                outs[k], got = stitch(self.model, x, names, self.windows, self.divisor,
                                      inputs=inputs, select=select, splice=splice)
            else:
                with hooked(self.model, names, inputs=inputs, select=select, splice=splice) as cap:
                    outs[k] = self.model(x)
                    got = cap.pop()
            for n in names:
                acts[n][k] = got[n]
        if names and all(i.error for i in infos):
            # every scan of the batch was skipped: one pass on a blank input gives each layer's
            # width, so the batch still yields (zero) rows of the right shape
            dev = next(self.model.parameters()).device
            side = self.windows.roi if self.windows else (2 * self.divisor,) * 3
            with hooked(self.model, names, inputs=inputs, select=select) as cap:
                self.model(torch.zeros((1, self._in_channels, *side), device=dev))
                acts = cap.pop()
        return Run(outs, acts)

    def logits(self, output) -> torch.Tensor:
        if isinstance(output, list):  # scans run one by one: their outputs, skipped ones left out
            kept = [super(VolumeAdapter, self).logits(o) for o in output if o is not None]
            if not kept:
                raise InputError("no model output to score: every scan of the batch was skipped, or the "
                                 "network's output is not a spatial map that sliding windows can stitch "
                                 "(run it without roi_size)")
            return torch.cat(kept)
        return super().logits(output)

    def rows(self, layer: str, activation, batch: Batch) -> tuple[torch.Tensor, pd.DataFrame]:
        infos = batch.extra["scans"]
        per_scan = isinstance(activation, list)
        rows, obs = [], []
        for k, info in enumerate(infos):
            if info.error:
                continue
            act = activation[k] if per_scan else activation[k:k + 1]
            r, o = self._scan_rows(layer, act, info, batch.meta.iloc[[k]])
            rows.append(r)
            obs.append(o)
        if not rows:  # every scan skipped: zero rows, with the layer's width and every column
            d = activation.shape[-1] if activation.ndim == 3 else activation.shape[1]
            return torch.zeros((0, d), device=activation.device), self._empty_obs(batch.meta)
        return torch.cat(rows), pd.concat(obs, ignore_index=True)

    def data_fingerprint(self, batch: Batch):
        return {"inputs": batch.inputs, "skipped": [i.error or "" for i in batch.extra["scans"]]}

    def data_checksums(self, dataset) -> dict[str, str]:
        """The cohort's data, by part: ``obs``, the manifest's rows as they go into obs
        (``subject_id``, ``sample_id``, every clinical column, with their types); ``files``,
        the size and bytes of every image and mask (DICOM folders: every file in them),
        streamed, by position in the cohort (not by path: a cohort moved elsewhere is the same
        data), and the rows skipped because a file is missing."""
        c = self.cohort
        log.info("%s: checksumming %d scans (size and bytes of every file)", c.source, len(c))
        files = [[s.index, s.sample_id, file_checksum(s.image), file_checksum(s.mask) if s.mask else None]
                 for s in c.scans]
        missing = [[s["row"], s["sample_id"], s["reason"]] for s in c.skipped]
        return {"obs": digest(c.clinical), "files": digest([files, missing])}

    def skipped_items(self, batch: Batch | None = None) -> list[dict]:
        """Manifest rows whose files are missing (``batch=None``), or a batch's scans that
        could not be read or used (corrupt, NaN voxels, 2-D/4-D, failed preprocessing)."""
        if batch is None:
            return [dict(s) for s in self.cohort.skipped] if self.cohort is not None else []
        return [{"row": i.row, "sample_id": i.sample_id, "file": i.file, "reason": i.error}
                for i in batch.extra["scans"] if i.error]

    def config(self) -> dict:
        w = self.windows
        return {"adapter": type(self).__name__, "preprocess": self.preprocess,
                "roi_size": list(w.roi) if w else None, "overlap": w.overlap if w else None,
                "blend": w.mode if w else None, "sigma_scale": w.sigma_scale if w else None,
                "divisor": self.divisor, "patch": list(self.patch), "layout": self.layout,
                "image_col": self.image_col, "mask_col": self.mask_col}
        # on_bad_scan is left out on purpose: a run stopped by a bad scan (``raise``) can be
        # finished with ``skip`` on the same store, keeping every scan already written

    # -- one scan ------------------------------------------------------------------------------

    def prepare_scan(self, scan) -> dict:
        """Load and preprocess one :class:`Scan`: ``{"image", "mask"?}`` MetaTensors on the
        model grid (with their transform history, for inverting maps) and ``original``."""
        image = load_scan(scan.image, "image")
        mask = None
        if scan.mask is not None:
            mask = load_scan(scan.mask, "mask")
            check_same_grid(image, mask, scan.image, scan.mask)
        try:
            out = run_chain(self.chain, image, mask)
        except Exception as e:  # a transform failing on this scan's content or geometry
            raise ScanError(f"{scan.image}: preprocessing failed ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]})") from None
        out["original"] = image
        return out

    def _scan_rows(self, layer, act, info: ScanInfo, meta_row: pd.DataFrame):
        if act.ndim == 3:
            act = tokens_to_grid(act, info.padded, self.model, layer)
        if act.ndim != 5:
            raise InputError(f"layer {layer!r} gives shape {tuple(act.shape)}; the volume adapter needs a "
                             "spatial map [batch, channels, x, y, z] or ViT tokens")
        stride = []
        for p, n in zip(info.padded, act.shape[2:]):
            if p % n:
                raise InputError(f"layer {layer!r}: a {info.padded} input gives a {tuple(act.shape[2:])} grid, "
                                 "not a whole number of voxels per cell; set divisor= to the network's stride")
            stride.append(p // n)
        if max(self.patch) > 1:
            act = F.avg_pool3d(act, self.patch, ceil_mode=True)
            stride = [s * q for s, q in zip(stride, self.patch)]
        stride = np.array(stride)
        n = [math.ceil(s / k) for s, k in zip(info.shape, stride)]  # cells touching the scan
        act = act[0, :, :n[0], :n[1], :n[2]]
        frac = None
        if info.mask is not None and self.layout == "spatial":
            frac = F.avg_pool3d(info.mask[None].float(), tuple(int(s) for s in stride), ceil_mode=True)
            frac = frac[0, 0, :n[0], :n[1], :n[2]]
        if self.layout == "scan":
            rows = act.flatten(1).mean(1, keepdim=True).T
            grid = np.full((1, 3), -1, dtype=np.int32)
            voxel = (np.array(info.shape, dtype=np.float64)[None] - 1) / 2
            fr = None
            if info.mask is not None:  # share of the scan (padding excluded) inside the mask
                fr = info.mask[0, :info.shape[0], :info.shape[1], :info.shape[2]].float().mean()[None]
        else:
            rows = act.flatten(1).T
            grid = np.indices(n).reshape(3, -1).T.astype(np.int32)
            voxel = grid * stride + (stride - 1) / 2
            fr = None if frac is None else frac.flatten()
        world = voxel @ info.affine[:3, :3].T + info.affine[:3, 3]
        obs = meta_row.iloc[np.zeros(len(grid), dtype=np.int64)].reset_index(drop=True)
        for a, name in enumerate("ijk"):
            obs[f"grid_{name}"] = grid[:, a]
        for a, name in enumerate("ijk"):
            obs[f"voxel_{name}"] = voxel[:, a].astype(np.float32)
        for a, name in enumerate("xyz"):
            obs[f"world_{name}"] = world[:, a].astype(np.float32)
        if self.cohort is not None and self.cohort.has_masks:
            obs["mask_fraction"] = (fr.cpu().numpy().astype(np.float32) if fr is not None
                                    else np.full(len(grid), np.nan, dtype=np.float32))
        return rows, obs

    def _empty_obs(self, meta: pd.DataFrame) -> pd.DataFrame:
        obs = meta.iloc[:0].reset_index(drop=True)
        for c in ("grid_i", "grid_j", "grid_k"):
            obs[c] = np.zeros(0, np.int32)
        for c in ("voxel_i", "voxel_j", "voxel_k", "world_x", "world_y", "world_z"):
            obs[c] = np.zeros(0, np.float32)
        if self.cohort is not None and self.cohort.has_masks:
            obs["mask_fraction"] = np.zeros(0, np.float32)
        return obs

    def _note_skip(self, info: ScanInfo) -> None:
        self.skipped.append({"sample_id": info.sample_id, "file": info.file, "reason": info.error})
        log.warning("skipped scan %s (%s): %s [%d skipped so far]", info.sample_id, info.file,
                    info.error, len(self.skipped))

    # -- maps back onto the scan ----------------------------------------------------------------

    def evidence(self, table, features: list[str], *, data=None, sae=None,
                 subjects: pd.DataFrame | None = None, label: str | None = None, reference=None,
                 out=None, progress: bool = True) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
        """Maps of SAE ``features`` over the original scans (raw and attribution-refined), their
        agreement with the cohort's masks, peaks in mm and atlas regions, and group means by
        ``label``: :func:`bioviz.adapters.volume.evidence.volume_evidence` with this adapter's
        ``atlas`` and its defaults (tables ``maps`` and ``map_groups``)."""
        from .evidence import volume_evidence

        return volume_evidence(self, table, features, data=data, sae=sae, subjects=subjects, label=label,
                               reference=reference, out=out, atlas=self.atlas, n_maps=self.maps,
                               progress=progress)

    def to_nifti(self, values, obs: pd.DataFrame, sample_id: str, *, data=None, interpolation: str = "linear"):
        """Per-row ``values`` of one scan's rows (``obs`` may hold other scans' rows too) as a
        ``nibabel`` image on the original scan's grid, with its original affine."""
        from .maps import rows_to_original

        return rows_to_original(self, values, obs, sample_id, data=data, interpolation=interpolation)

    def write_map(self, values, obs: pd.DataFrame, sample_id: str, path, *, data=None,
                  montage: bool = True, interpolation: str = "linear", title: str | None = None) -> dict:
        """Write the map as NIfTI at ``path`` (and a PNG montage beside it); returns the paths."""
        from .maps import write_map

        return write_map(self, values, obs, sample_id, path, data=data, montage=montage,
                         interpolation=interpolation, title=title)


@dataclass
class _Item:
    index: int
    sample_id: str
    file: str
    image: torch.Tensor | None = None  # [1, *shape]
    mask: torch.Tensor | None = None
    affine: np.ndarray | None = None
    error: str | None = None
    row: int | None = None  # 1-based data row of the manifest


class _Scans(torch.utils.data.Dataset):
    """Loads and preprocesses scan ``i`` on access (in DataLoader workers, if any)."""

    def __init__(self, adapter: VolumeAdapter, cohort: Cohort):
        self.adapter, self.cohort = adapter, cohort

    def __len__(self) -> int:
        return len(self.cohort)

    def __getitem__(self, i: int) -> _Item:
        scan = self.cohort[i]
        try:
            out = self.adapter.prepare_scan(scan)
        except ScanError as e:
            if self.adapter.on_bad_scan == "raise":
                raise ScanError(f"manifest row {scan.row} (sample {scan.sample_id!r}): {e}") from None
            return _Item(i, scan.sample_id, str(scan.image), error=str(e), row=scan.row)
        img = out["image"]
        mask = out["mask"].as_tensor() if "mask" in out else None
        return _Item(i, scan.sample_id, str(scan.image), img.as_tensor().contiguous(), mask,
                     np.asarray(img.affine, dtype=np.float64), row=scan.row)
