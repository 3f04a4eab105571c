"""The 3D-scan adapter: MONAI networks over NIfTI/DICOM cohorts, with rows placed on the
scan (voxel and world coordinates) and features mapped back onto the original scan.

One module per thing it owns: ``cohort`` (the manifest), ``io`` (reading and checking a
scan), ``preprocess`` (MONAI transform chains and their inverse), ``networks`` (MONAI
networks, weights, bundles, hook points), ``windows`` (sliding windows that stitch hooked
layers), ``adapter`` (:class:`VolumeAdapter`), ``maps`` and ``montage`` (the reverse path),
``agreement`` (maps against ground-truth masks), ``refine`` (attribution-refined maps that
localise: integrated gradients of the logit or of an SAE feature from a lesion-free baseline),
``evidence`` (per-feature maps, agreement, peaks, atlas regions and group means:
``VolumeAdapter.evidence``), ``phantom`` (a brain-MRI-like cohort with
planted lesions, from the MNI152 template), ``study`` (that cohort as the 3D-scan demo study's
builder and its check against the masks), ``demo`` (the shipped demo model in
``demo_model/``). Checkpoints load through :mod:`bioviz.adapters.weights`.
"""

from .adapter import VolumeAdapter
from .agreement import map_agreement
from .cohort import Cohort, CohortError, Scan
from .demo import demo_adapter, demo_bundle_path
from .evidence import Atlas, read_atlas, volume_evidence
from .io import ScanError, load_scan
from .montage import montage
from .networks import (
    WeightsError,
    WeightsReport,
    build_network,
    hook_points,
    load_weights,
    read_bundle,
)
from .phantom import make_brain_cohort
from .preprocess import PRESETS, PreprocessError
from .refine import attribution_map, feature_target, healthy_baseline, refined_to_nifti
from .study import PhantomLesions

__all__ = [
    "VolumeAdapter", "Cohort", "CohortError", "Scan", "ScanError", "load_scan", "map_agreement",
    "montage", "build_network", "hook_points", "load_weights", "read_bundle", "WeightsError",
    "WeightsReport", "PRESETS", "PreprocessError", "demo_adapter", "demo_bundle_path",
    "make_brain_cohort", "attribution_map", "healthy_baseline", "refined_to_nifti", "feature_target",
    "Atlas", "read_atlas", "volume_evidence", "PhantomLesions",
]
