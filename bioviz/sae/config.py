"""SAEConfig: everything needed to rebuild a sparse autoencoder, JSON-safe.

One flat dataclass for every architecture (like sparsify's ``SaeConfig``): fields an
architecture does not use are ignored by it, so a YAML config can switch the
architecture by changing one word. ``validate()`` reports every problem at once, each
naming the parameter, so a bad config fails before any training starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any

#: Version of the on-disk layout (sae.json + sae.safetensors). Bump when it changes.
FORMAT_VERSION = 1

B_DEC_INIT_METHODS = ("geometric_median", "mean", "zeros")

# Architectures whose codes come from a top-k selection (k, AuxK and the inference
# threshold apply to them).
_TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")


@dataclass
class SAEConfig:
    """Hyper-parameters and fitted scalars of one SAE.

    Sizes: give ``d_sae`` directly, or ``expansion_factor`` (then ``d_sae = d_in *
    expansion_factor``, which must come out a whole number).

    Units: every loss term is computed on normalised inputs (see ``normalise_inputs``).
    ``mse`` is the per-element mean squared error; the sparsity penalties (``l1``,
    ``l0_penalty``) are per-row sums averaged over rows and enter the total loss divided by
    ``d_in``, so ``l1_coefficient`` and ``l0_coefficient`` keep the meaning they have in the
    papers that write the loss as ``||x - x_hat||^2 + lambda * penalty`` per row
    (Anthropic's lambda ~ 5 with inputs scaled to norm sqrt(d_in)).
    """

    architecture: str = "topk"
    d_in: int = 0
    d_sae: int | None = None
    expansion_factor: float | None = None

    # top-k family
    k: int = 32
    # BatchTopK / Matryoshka: exponential moving average rate of the inference threshold.
    threshold_momentum: float = 0.01
    # Fitted during training (BatchTopK / Matryoshka); None until estimated. Normalised units.
    inference_threshold: float | None = None
    # Matryoshka: sizes of the nested dictionaries, increasing, last == d_sae.
    # None -> d_sae/8, d_sae/4, d_sae/2, d_sae.
    matryoshka_prefixes: list[int] | None = None

    # ReLU: L1 penalty sum_i f_i * ||W_dec_i|| (Anthropic, April 2024 update).
    l1_coefficient: float = 5.0
    # JumpReLU (Rajamanoharan et al. 2024)
    l0_coefficient: float = 1.0
    jumprelu_bandwidth: float = 1e-3
    jumprelu_init_threshold: float = 1e-3

    # AuxK (Gao et al. 2024): k_aux None -> d_in // 2.
    k_aux: int | None = None
    auxk_coefficient: float = 1 / 32
    # A latent is dead once it has not fired for this many input rows (tokens); the paper
    # uses 10M tokens. Lower it for small cohorts.
    dead_rows_threshold: int = 10_000_000

    # Input normalisation: one scalar so that the mean L2 norm of inputs is sqrt(d_in).
    normalise_inputs: bool = True
    normalisation_scale: float | None = None  # fitted; None = not fitted yet (acts as 1)

    # Initialisation
    b_dec_init: str = "geometric_median"
    tied_init: bool = True
    seed: int | None = None

    # Top-k family: decode through the selected decoder rows (embedding_bag) and give the
    # encoder a sparse backward; False uses dense matmuls (slower, kept as a reference).
    sparse_path: bool = True

    provenance: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The helper: derive d_sae from the expansion factor when only that is given.
        if self.d_sae is None and self.expansion_factor is not None:
            product = self.d_in * self.expansion_factor if _is_number(self.d_in) else None
            if product is not None and float(product).is_integer():
                self.d_sae = int(product)

    # -- convenience ---------------------------------------------------------------------

    @classmethod
    def from_expansion(cls, d_in: int, expansion_factor: float, **kwargs) -> SAEConfig:
        """``SAEConfig(d_in=d_in, d_sae=d_in * expansion_factor, ...)``, validated."""
        cfg = cls(d_in=d_in, expansion_factor=expansion_factor, **kwargs)
        cfg.validate()
        return cfg

    @property
    def resolved_k_aux(self) -> int:
        return self.k_aux if self.k_aux is not None else max(1, self.d_in // 2)

    @property
    def resolved_prefixes(self) -> list[int]:
        if self.matryoshka_prefixes is not None:
            return [int(m) for m in self.matryoshka_prefixes]
        sizes = [self.d_sae // 2**i for i in (3, 2, 1, 0)]
        return sorted({m for m in sizes if m > 0})

    # -- checks --------------------------------------------------------------------------

    def validate(self) -> SAEConfig:
        """Raise ``ValueError`` listing every invalid parameter; return self when valid."""
        from .base import ARCHITECTURES  # the registry is filled when bioviz.sae is imported

        errors: list[str] = []
        if self.architecture not in ARCHITECTURES:
            errors.append(
                f"architecture={self.architecture!r} is unknown; known architectures: "
                f"{', '.join(sorted(ARCHITECTURES))}"
            )
        if not _is_int(self.d_in) or self.d_in < 1:
            errors.append(f"d_in={self.d_in!r} must be a positive integer")
        if self.expansion_factor is not None:
            if not _is_number(self.expansion_factor) or self.expansion_factor <= 0:
                errors.append(f"expansion_factor={self.expansion_factor!r} must be positive")
            elif _is_int(self.d_in):
                product = self.d_in * self.expansion_factor
                if not float(product).is_integer():
                    errors.append(
                        f"expansion_factor={self.expansion_factor!r} gives d_sae = d_in * "
                        f"expansion_factor = {product}, which is not an integer"
                    )
                elif self.d_sae is not None and self.d_sae != int(product):
                    errors.append(
                        f"d_sae={self.d_sae!r} disagrees with expansion_factor="
                        f"{self.expansion_factor!r} (d_in * expansion_factor = {int(product)})"
                    )
        if self.d_sae is None:
            if self.expansion_factor is None:
                errors.append("d_sae is missing: give d_sae or expansion_factor")
        elif not _is_int(self.d_sae) or self.d_sae < 1:
            errors.append(f"d_sae={self.d_sae!r} must be a positive integer")
        d_sae_ok = _is_int(self.d_sae) and self.d_sae >= 1

        if self.architecture in _TOPK_FAMILY:
            if not _is_int(self.k) or self.k < 1:
                errors.append(f"k={self.k!r} must be an integer >= 1")
            elif d_sae_ok and self.k > self.d_sae:
                errors.append(f"k={self.k} is larger than d_sae={self.d_sae}")
            if self.k_aux is not None and (not _is_int(self.k_aux) or self.k_aux < 1):
                errors.append(f"k_aux={self.k_aux!r} must be an integer >= 1 (or None)")
            if not 0 < self.threshold_momentum <= 1:
                errors.append(f"threshold_momentum={self.threshold_momentum!r} must be in (0, 1]")
        if self.architecture == "matryoshka" and d_sae_ok:
            prefixes = self.resolved_prefixes
            if not all(_is_int(m) and m >= 1 for m in prefixes):
                errors.append(f"matryoshka_prefixes={prefixes} must be positive integers")
            elif any(b <= a for a, b in zip(prefixes, prefixes[1:])):
                errors.append(f"matryoshka_prefixes={prefixes} must be strictly increasing")
            elif prefixes[-1] != self.d_sae:
                errors.append(
                    f"matryoshka_prefixes={prefixes} must end at d_sae={self.d_sae} "
                    "(the last prefix is the whole dictionary)"
                )
        for name in ("l1_coefficient", "l0_coefficient", "auxk_coefficient"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0 or not math.isfinite(value):
                errors.append(f"{name}={value!r} must be a finite number >= 0")
        for name in ("jumprelu_bandwidth", "jumprelu_init_threshold"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                errors.append(f"{name}={value!r} must be > 0")
        if not _is_int(self.dead_rows_threshold) or self.dead_rows_threshold < 1:
            errors.append(f"dead_rows_threshold={self.dead_rows_threshold!r} must be an integer >= 1")
        if self.normalisation_scale is not None and not (
            _is_number(self.normalisation_scale)
            and math.isfinite(self.normalisation_scale)
            and self.normalisation_scale > 0
        ):
            errors.append(f"normalisation_scale={self.normalisation_scale!r} must be finite and > 0")
        if self.b_dec_init not in B_DEC_INIT_METHODS:
            errors.append(f"b_dec_init={self.b_dec_init!r} must be one of {B_DEC_INIT_METHODS}")
        for name in ("provenance", "training"):
            try:
                json.dumps(getattr(self, name), allow_nan=False)
            except (TypeError, ValueError) as err:
                errors.append(f"{name} must be JSON-serialisable: {err}")
        if errors:
            raise ValueError("invalid SAEConfig:\n  - " + "\n  - ".join(errors))
        return self

    # -- (de)serialisation ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that ``json.dumps`` accepts (lists, not tuples; no tensors)."""
        return json.loads(json.dumps(dataclasses.asdict(self), allow_nan=False))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        """Inverse of ``to_dict``. Unknown keys (from a newer bioviz) are ignored, with a warning."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"SAEConfig: ignoring unknown keys {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
