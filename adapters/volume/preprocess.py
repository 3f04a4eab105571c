"""Preprocessing as a MONAI dictionary-transform chain, from a preset or from config, and
its inverse (a map on the model grid back onto the original scan grid).

Presets follow the public MONAI bundles:
  * ``ct``  (swin_unetr_btcv / spleen style): orientation RAS, spacing 1.5×1.5×2 mm,
    Hounsfield window -175..250 → [0, 1] (clipped), crop to the foreground;
  * ``mri`` (brats style): orientation RAS, spacing 1 mm, z-score over non-zero voxels.
Override any option with a dict: ``{"preset": "mri", "pixdim": [3, 3, 3], "spatial_size": [64, 72, 64]}``.
Or give a chain: a list of ``{"_target_": "Spacingd", "pixdim": [...]}`` /
``{"name": "Spacingd", "args": {...}}`` items naming ``monai.transforms`` dictionary
transforms (nothing outside monai.transforms is imported). Keys are set here: spatial
(invertible) transforms act on the image and its mask (nearest-neighbour for the mask),
intensity transforms on the image only.
"""

from __future__ import annotations

import copy
import numbers

import numpy as np
import torch

from bioviz.errors import InputError

PRESETS: dict[str, dict] = {
    "ct": {"orientation": "RAS", "pixdim": [1.5, 1.5, 2.0], "window": [-175.0, 250.0],
           "normalize": None, "crop_foreground": True, "margin": 0, "spatial_size": None},
    "mri": {"orientation": "RAS", "pixdim": [1.0, 1.0, 1.0], "window": None,
            "normalize": "nonzero", "crop_foreground": False, "margin": 0, "spatial_size": None},
}
KEYS = ("image", "mask")
#: loading and typing steps of bundle chains; the adapter loads scans itself
SKIP = {"LoadImaged", "EnsureChannelFirstd", "EnsureTyped", "ToTensord", "CastToTyped",
        "AddChanneld", "SaveImaged", "Identityd", "ToDeviced", "ToNumpyd"}
#: interpolating transforms: their ``mode`` is (image mode, "nearest" for the mask)
INTERPOLATING = {"Spacingd": "bilinear", "Resized": "area", "Zoomd": "area",
                 "Rotated": "bilinear", "Affined": "bilinear"}


class PreprocessError(InputError):
    """A preprocessing spec that cannot be built (names the item and the option)."""


def chain_spec(spec) -> list[dict]:
    """Normalise ``spec`` (preset name, preset dict, or list of transforms) to a JSON-safe
    list of ``{"name": ..., "args": {...}}`` — what is recorded in the store's fingerprint."""
    if spec is None:
        spec = "mri"
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise PreprocessError(f"preprocess={spec!r}: expected one of {sorted(PRESETS)}, a dict "
                                  "with 'preset' and options, or a list of MONAI transforms")
        return _preset_chain(spec, {})
    if isinstance(spec, dict):
        opts = dict(spec)
        name = opts.pop("preset", "mri")
        if name not in PRESETS:
            raise PreprocessError(f"preprocess preset {name!r}: expected one of {sorted(PRESETS)}")
        unknown = sorted(set(opts) - set(PRESETS[name]))
        if unknown:
            raise PreprocessError(f"preprocess: unknown option(s) {unknown} for preset {name!r}; "
                                  f"known: {sorted(PRESETS[name])}")
        return _preset_chain(name, opts)
    if isinstance(spec, (list, tuple)):
        out = []
        for n, item in enumerate(spec):
            parsed = _parse_item(item, n)
            if parsed is not None:
                out.append(parsed)
        return out
    raise PreprocessError(f"preprocess: expected a preset name, a dict or a list of transforms, "
                          f"got {type(spec).__name__}")


def _preset_chain(name: str, opts: dict) -> list[dict]:
    o = {**copy.deepcopy(PRESETS[name]), **opts}
    items = []
    if o["orientation"]:
        items.append({"name": "Orientationd", "args": {"axcodes": str(o["orientation"])}})
    if o["pixdim"]:
        items.append({"name": "Spacingd", "args": {"pixdim": _floats(o["pixdim"], "pixdim")}})
    crop = {"name": "CropForegroundd", "args": {"margin": int(o["margin"]), "allow_smaller": True}}
    if o["window"] is not None:
        lo, hi = _floats(o["window"], "window", n=2)
        items.append({"name": "ScaleIntensityRanged",
                      "args": {"a_min": lo, "a_max": hi, "b_min": 0.0, "b_max": 1.0, "clip": True}})
        if o["crop_foreground"]:  # after windowing, foreground is anything above the window floor
            items.append(crop)
    elif o["crop_foreground"]:  # before z-scoring, while background is still zero
        items.append(crop)
    if o["normalize"] == "nonzero":
        items.append({"name": "NormalizeIntensityd", "args": {"nonzero": True, "channel_wise": True}})
    elif o["normalize"] == "all":
        items.append({"name": "NormalizeIntensityd", "args": {"nonzero": False, "channel_wise": True}})
    elif o["normalize"] is not None:
        raise PreprocessError(f"preprocess normalize={o['normalize']!r}: expected 'nonzero', 'all' or None")
    if o["spatial_size"]:
        items.append({"name": "ResizeWithPadOrCropd",
                      "args": {"spatial_size": [int(v) for v in _floats(o["spatial_size"], "spatial_size")]}})
    return items


def _floats(v, what, n=3) -> list[float]:
    vals = [v] * n if isinstance(v, numbers.Number) else list(v)
    if len(vals) != n or not all(isinstance(x, numbers.Number) for x in vals):
        raise PreprocessError(f"preprocess {what}={v!r}: expected {n} numbers")
    return [float(x) for x in vals]


def _parse_item(item, n: int) -> dict | None:
    if not isinstance(item, dict):
        raise PreprocessError(f"preprocess item {n}: expected a dict naming a transform, got {item!r}")
    item = dict(item)
    if "_target_" in item:  # MONAI bundle style: the rest of the dict is the arguments
        target, args = item.pop("_target_"), item
    elif "class_path" in item:
        target, args = item.pop("class_path"), item.pop("init_args", {})
    elif "name" in item:
        target, args = item.pop("name"), item.pop("args", {})
    else:
        raise PreprocessError(f"preprocess item {n}: no '_target_', 'class_path' or 'name' in {item!r}")
    name = str(target).removeprefix("monai.transforms.")
    if "." in name:
        raise PreprocessError(f"preprocess item {n}: {target!r} is not in monai.transforms")
    if name in SKIP:
        return None
    if name.startswith("Rand"):
        raise PreprocessError(f"preprocess item {n}: {name} is random; inference needs a deterministic chain")
    _transform_class(name, n)
    args = {k: v for k, v in args.items() if k not in ("keys", "allow_missing_keys")}
    if name == "CropForegroundd":
        args["source_key"] = "image"
    return {"name": name, "args": args}


def _transform_class(name: str, n: int = 0):
    import monai.transforms as mt
    from monai.transforms import MapTransform

    cls = getattr(mt, name, None)
    if not (isinstance(cls, type) and issubclass(cls, MapTransform)):
        hint = f"; use the dictionary version {name}d" if isinstance(getattr(mt, name + "d", None), type) else ""
        raise PreprocessError(f"preprocess item {n}: {name!r} is not a MONAI dictionary transform{hint}")
    return cls


def build_chain(items: list[dict]):
    """A MONAI ``Compose`` over keys ``image`` (and ``mask`` when an item has one)."""
    from monai.transforms import Compose, EnsureChannelFirstd, InvertibleTransform

    out = [EnsureChannelFirstd(keys=list(KEYS), channel_dim="no_channel", allow_missing_keys=True)]
    for n, item in enumerate(items):
        cls = _transform_class(item["name"], n)
        args = dict(item["args"])
        spatial = issubclass(cls, InvertibleTransform)
        if item["name"] in INTERPOLATING:
            mode = args.get("mode", INTERPOLATING[item["name"]])
            args["mode"] = [mode[0] if isinstance(mode, (list, tuple)) else mode, "nearest"]
        if item["name"] == "Spacingd":
            args.setdefault("dtype", np.float32)
        if item["name"] == "Orientationd":  # axis labels from the MetaTensor's space (RAS here)
            args.setdefault("labels", None)
        if item["name"] == "CropForegroundd":
            args.setdefault("source_key", "image")
        keys = list(KEYS) if spatial else ["image"]
        try:
            out.append(cls(keys=keys, allow_missing_keys=True, **args))
        except TypeError as e:
            raise PreprocessError(f"preprocess item {n} ({item['name']}): {e}") from None
    return Compose(out)


def run_chain(chain, image, mask=None) -> dict:
    """Apply ``chain`` to a loaded 3D image (and mask); values as float32 MetaTensors [1, X, Y, Z]."""
    data = {"image": image}
    if mask is not None:
        data["mask"] = mask
    out = chain(data)
    out["image"] = out["image"].float()
    if "mask" in out:
        out["mask"] = (out["mask"] > 0.5).float()
    return out


def invert(chain, image_pp, values: torch.Tensor):
    """``values`` [X, Y, Z] on the preprocessed grid of ``image_pp`` → a MetaTensor [1, ...]
    on the original scan grid, through the inverse of every spatial transform (``Invertd``)."""
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    if tuple(values.shape) != tuple(image_pp.shape[1:]):
        raise InputError(f"map shape {tuple(values.shape)} is not the preprocessed grid {tuple(image_pp.shape[1:])}")
    m = MetaTensor(values[None].float(), meta=dict(image_pp.meta),
                   applied_operations=copy.deepcopy(image_pp.applied_operations))
    inv = Invertd(keys="map", transform=chain, orig_keys="image", nearest_interp=False)
    return inv({"map": m, "image": image_pp})["map"]
