"""What an SAE remembers about the activations it was trained on, checked against what it is
asked to work on next. Each stage after training (encode, fidelity, later the statistics and
interpretation stages) takes the layer and the store from the SAE's recorded provenance when
they are not given; an explicit argument that disagrees with the record is an error unless
the caller allows it, and the allowance travels into the stage's output."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .sae import SparseAutoencoder


@dataclass
class Target:
    """Where an SAE is applied: the layer, the store path (None for a live model), and the
    disagreements with the SAE's record that the caller allowed."""

    layer: str | None
    store: str | None = None
    mismatches: list[str] = field(default_factory=list)
    allowed: bool = False

    def record(self) -> dict:
        """JSON-safe summary for an artifact's provenance."""
        return {"layer": self.layer, "store": self.store, "allow_mismatch": self.allowed,
                "mismatches": list(self.mismatches)}


def resolve(sae: SparseAutoencoder, *, layer: str | None = None, store: str | None = None,
            model: dict | None = None, allow_mismatch: bool = False, need_store: bool = False) -> Target:
    """The layer (and store) to apply ``sae`` to, defaulting to its recorded provenance.

    Parameters
    ----------
    sae
        A trained SAE; ``sae.cfg.provenance`` holds ``layer``, ``store`` and ``model``
        (name, weights checksum) when it was trained by :func:`bioviz.train`.
    layer, store
        Explicit choices; they win over the record, but a layer or model that differs from
        the record is an error unless ``allow_mismatch``.
    model
        The identity (``Adapter.identity()`` or a store manifest's ``model``) of the model
        whose activations the SAE will see; its weights checksum must be the recorded one.
    allow_mismatch
        Accept disagreements; they are listed in the returned :class:`Target`.
    need_store
        The caller needs a store: one must be given or recorded, and exist on disk.
    """
    prov = sae.cfg.provenance or {}
    mismatches = []
    if layer is None:
        layer = prov.get("layer")
    elif prov.get("layer") is not None and layer != prov["layer"]:
        mismatches.append(f"layer: the SAE was trained on {prov['layer']!r}, asked for {layer!r}")
    want = (prov.get("model") or {}).get("weights_blake2b")
    have = (model or {}).get("weights_blake2b")
    if want and have and want != have:
        mismatches.append(f"model weights: the SAE was trained on activations of a model with "
                          f"weights_blake2b {want}, this one has {have}")
    if store is None and need_store:
        store = prov.get("store")
        if store is None:
            raise InputError("store: not given, and the SAE records no store it was trained on; "
                             "pass the activation store to use")
        if not Path(store).exists():
            raise FileNotFoundError(f"store: the SAE was trained on {store}, which does not exist "
                                    "(moved?); pass the store to use")
    if mismatches and not allow_mismatch:
        raise InputError("the SAE does not match what it is asked to work on:\n  - "
                         + "\n  - ".join(mismatches)
                         + "\npass allow_mismatch=True to go on anyway (it is recorded in the output)")
    return Target(layer, None if store is None else str(store), mismatches, bool(allow_mismatch))


def on_model(sae: SparseAutoencoder, adapter, layer: str | None = None, *, allow_mismatch: bool = False):
    """``(target, model, device, sae)`` to apply ``sae`` inside ``adapter``'s live model:
    ``target.layer`` defaults to the SAE's record, the model must be the one the SAE's activations
    came from (unless ``allow_mismatch``), and the model and the SAE are put in eval mode on
    the model's device (what fidelity, attribution and interventions share)."""
    # the weights checksum is only computed when the SAE has one to compare with
    recorded = (sae.cfg.provenance or {}).get("model")
    target = resolve(sae, layer=layer, model=adapter.identity() if recorded else None,
                     allow_mismatch=allow_mismatch)
    if target.layer is None:
        raise InputError("layer: the SAE records no layer it was trained on; pass layer=")
    model = adapter.model.eval()
    device = next(model.parameters()).device
    return target, model, device, sae.to(device).eval()
