"""SAE checkpoints: a directory with ``sae.safetensors`` (weights) and ``sae.json`` (config).

``sae.json`` is ``SAEConfig.to_dict()`` (architecture, sizes, k, fitted normalisation
scale and thresholds, provenance, training settings) plus ``format``,
``format_version`` and a ``tensors`` table of names, shapes and dtypes, so any JSON
reader can see what a checkpoint is. The safetensors header repeats the architecture and
sizes, so a weights file paired with the wrong JSON is refused rather than silently run
as another kind of SAE (TopK and ReLU have the same tensor names and shapes).
Never pickle: weights go through safetensors only.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import InputError
from ..lock import ArtifactLock
from .config import FORMAT_VERSION, SAEConfig
from .registry import ARCHITECTURES

if TYPE_CHECKING:  # annotations only: base imports this module (SparseAutoencoder.save)
    from .base import SparseAutoencoder

FORMAT = "bioviz.sae"
WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "sae.json"
_DOC_KEYS = ("format", "format_version", "tensors")


def build_sae(config: SAEConfig | dict) -> SparseAutoencoder:
    """Instantiate the registered architecture named by ``config.architecture``.

    Parameters
    ----------
    config
        The config, or its ``to_dict()`` form; validated first.

    Returns
    -------
    SparseAutoencoder
        A new SAE with initial weights (seeded by ``config.seed``), in train mode.

    Raises
    ------
    ValueError
        The config is invalid (every problem listed, each naming the parameter).
    """
    if isinstance(config, dict):
        config = SAEConfig.from_dict(config)
    config.validate()
    return ARCHITECTURES[config.architecture](config)


def save_sae(sae: SparseAutoencoder, path_dir) -> Path:
    """Write the checkpoint: ``sae.safetensors`` and ``sae.json`` in ``path_dir``.

    Each file is written to a temporary name and renamed, the JSON last, so a reader never
    sees a half-written checkpoint; the folder's writer lock (:mod:`bioviz.lock`) is held
    meanwhile, so two writers never mix their files.

    Parameters
    ----------
    sae
        The SAE; its ``fitted_config()`` becomes ``sae.json``.
    path_dir
        The checkpoint directory (created if missing).

    Returns
    -------
    pathlib.Path
        The directory.
    """
    path = Path(path_dir)
    path.mkdir(parents=True, exist_ok=True)
    cfg = sae.fitted_config()
    state = {k: v.detach().to("cpu").contiguous() for k, v in sae.state_dict().items()}
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "architecture": cfg.architecture,
        "d_in": str(cfg.d_in),
        "d_sae": str(cfg.d_sae),
    }
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **cfg.to_dict(),
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in state.items()
        },
    }
    weights, config = path / WEIGHTS_FILE, path / CONFIG_FILE
    with ArtifactLock(path, "SAE checkpoint"):
        save_file(state, str(weights) + ".tmp", metadata=header)
        os.replace(str(weights) + ".tmp", weights)
        tmp = config.with_name(CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
        os.replace(tmp, config)
    return path


def load_sae(
    path_dir,
    expect_architecture: str | None = None,
    expect_d_in: int | None = None,
    device: str | torch.device = "cpu",
) -> SparseAutoencoder:
    """Load a checkpoint written by ``save_sae``, in eval mode.

    Parameters
    ----------
    path_dir
        The checkpoint directory (``sae.json`` + ``sae.safetensors``).
    expect_architecture
        Refuse a checkpoint of another architecture.
    expect_d_in
        Refuse a checkpoint trained on activations of another width (give the width of
        the activations you are about to encode).
    device
        Where to put the weights.

    Returns
    -------
    SparseAutoencoder
        The SAE, in eval mode.

    Raises
    ------
    bioviz.errors.InputError
        A damaged file (truncated safetensors, invalid JSON), or any disagreement, naming
        the file and what differs (a ValueError): JSON vs safetensors header
        (architecture, sizes), tensor names and shapes vs what ``d_in``/``d_sae`` imply,
        ``expect_architecture``, ``expect_d_in``.
    FileNotFoundError
        A file is missing.
    """
    path = Path(path_dir)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p}: file not found (an SAE checkpoint directory holds {CONFIG_FILE} and "
                f"{WEIGHTS_FILE})"
            )
    cfg = _read_config(config_path)
    if expect_architecture is not None and cfg.architecture != expect_architecture:
        raise InputError(
            f"{config_path}: expected a {expect_architecture!r} SAE but the checkpoint is "
            f"architecture={cfg.architecture!r}"
        )
    if expect_d_in is not None and int(expect_d_in) != cfg.d_in:
        raise InputError(
            f"{config_path}: store has d={int(expect_d_in)} but the SAE was trained on "
            f"d_in={cfg.d_in}"
        )

    sae = build_sae(cfg)
    expected = sae.state_dict()
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            _check_header(header, cfg, weights_path, config_path)
            names = set(f.keys())
            missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
            if missing or extra:
                raise InputError(
                    f"{weights_path}: tensors do not match a {cfg.architecture!r} SAE "
                    f"(per {config_path.name}): missing {missing}, unexpected {extra}"
                )
            state = {name: f.get_tensor(name) for name in names}
    except (SafetensorError, OSError) as err:  # truncated, damaged or not safetensors at all
        raise InputError(f"{weights_path}: not a readable safetensors file ({err}); the "
                         "checkpoint is damaged or incomplete, save or copy it again") from None
    for name, tensor in state.items():
        want = tuple(expected[name].shape)
        if tuple(tensor.shape) != want:
            raise InputError(
                f"{weights_path}: tensor {name!r} has shape {tuple(tensor.shape)} but "
                f"{config_path.name} (d_in={cfg.d_in}, d_sae={cfg.d_sae}) implies {want}"
            )
    sae = sae.to(dtype=state["W_enc"].dtype)
    sae.load_state_dict(state)
    if cfg.normalisation_scale is not None and not math.isclose(
        float(sae.norm_scale), cfg.normalisation_scale, rel_tol=1e-6
    ):
        raise InputError(
            f"{weights_path}: norm_scale={float(sae.norm_scale)} disagrees with "
            f"normalisation_scale={cfg.normalisation_scale} in {config_path.name}"
        )
    return sae.to(device).eval()


def _read_config(config_path: Path) -> SAEConfig:
    try:
        doc = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{config_path}: not valid JSON ({err})") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{config_path}: not a bioviz SAE config (format != {FORMAT!r})")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(
            f"{config_path}: format_version={version!r}; this bioviz reads up to "
            f"{FORMAT_VERSION} (upgrade bioviz)"
        )
    try:
        return SAEConfig.from_dict({k: v for k, v in doc.items() if k not in _DOC_KEYS}).validate()
    except (TypeError, ValueError) as err:
        raise InputError(f"{config_path}: {err}") from err


def _check_header(header: dict, cfg: SAEConfig, weights_path: Path, config_path: Path) -> None:
    if header.get("format") != FORMAT:
        raise InputError(f"{weights_path}: not written by bioviz (no {FORMAT!r} header)")
    said = {"architecture": cfg.architecture, "d_in": str(cfg.d_in), "d_sae": str(cfg.d_sae)}
    for key, json_value in said.items():
        if header.get(key) != json_value:
            raise InputError(
                f"{weights_path} holds a {header.get('architecture')!r} SAE with "
                f"{key}={header.get(key)!r} but {config_path.name} says {key}={json_value!r}"
            )
