"""SAEConfig (everything needed to rebuild a sparse autoencoder, JSON-safe) and OptimConfig
(how the Lightning module trains one).

One flat dataclass for every architecture (like sparsify's ``SaeConfig``): fields an
architecture does not use are ignored by it, so a YAML config can switch the
architecture by changing one word. Which fields an architecture uses, and what values
they may take, is the architecture class's business (``config_fields`` and
``check_config`` on each class in the registry); ``validate()`` reports every problem at
once, each naming the parameter, so a bad config fails before any training starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from .registry import ARCHITECTURES

#: Version of the on-disk layout (sae.json + sae.safetensors). Bump when it changes.
FORMAT_VERSION = 1

B_DEC_INIT_METHODS = ("geometric_median", "mean", "zeros")

#: SAEConfig fields every architecture uses (the others belong to architectures).
COMMON_FIELDS = (
    "architecture", "d_in", "d_sae", "expansion_factor", "dead_rows_threshold",
    "normalise_inputs", "normalisation_scale", "b_dec_init", "tied_init", "seed",
    "provenance", "training",
)


@dataclass
class SAEConfig:
    """Hyper-parameters and fitted scalars of one sparse autoencoder.

    Sizes: give ``d_sae`` directly, or ``expansion_factor`` (then ``d_sae = d_in *
    expansion_factor``, which must come out a whole number). When training, ``d_in``
    comes from the data.

    Units: every loss term is computed on normalised inputs (see ``normalise_inputs``).
    ``mse`` is the per-element mean squared error; the sparsity penalties (``l1``,
    ``l0_penalty``) are per-row sums averaged over rows and enter the total loss divided by
    ``d_in``, so ``l1_coefficient`` and ``l0_coefficient`` keep the meaning they have in the
    papers that write the loss as ``||x - x_hat||^2 + lambda * penalty`` per row
    (Anthropic's lambda ~ 5 with inputs scaled to norm sqrt(d_in)).

    Parameters
    ----------
    architecture
        topk, batchtopk, relu, jumprelu or matryoshka (``bioviz.sae.ARCHITECTURES``).
    d_in
        Width of the activations. Filled in from the store when training.
    d_sae
        Dictionary size (number of latents).
    expansion_factor
        d_sae = d_in * expansion_factor, when d_sae is not given.
    k
        Top-k family (topk, batchtopk, matryoshka): active latents per row (BatchTopK: on
        average over the batch).
    threshold_momentum
        BatchTopK / Matryoshka: exponential moving average rate of the inference threshold.
    inference_threshold
        BatchTopK / Matryoshka: fitted during training, in normalised units; None until
        estimated.
    matryoshka_prefixes
        Matryoshka: sizes of the nested dictionaries, increasing, the last equal to d_sae.
        None: d_sae/8, d_sae/4, d_sae/2, d_sae.
    l1_coefficient
        ReLU: weight of the L1 penalty sum_i f_i * ||W_dec_i|| (Anthropic, April 2024
        update).
    l0_coefficient
        JumpReLU (Rajamanoharan et al. 2024): weight of the L0 penalty.
    jumprelu_bandwidth
        JumpReLU: width of the straight-through estimator's rectangle kernel.
    jumprelu_init_threshold
        JumpReLU: initial threshold of every latent.
    k_aux
        Top-k family, AuxK (Gao et al. 2024): dead latents used to model the residual.
        None: d_in // 2.
    auxk_coefficient
        Top-k family: weight of the AuxK loss.
    dead_rows_threshold
        A latent is dead once it has not fired for this many input rows (tokens); the
        paper uses 10M tokens. Training caps it at one pass over the store.
    normalise_inputs
        Scale inputs by one scalar so that their mean L2 norm is sqrt(d_in).
    normalisation_scale
        That scalar, fitted before training; None: not fitted yet (acts as 1).
    b_dec_init
        How the pre-encoder bias starts: geometric_median, mean or zeros.
    tied_init
        Start the encoder as the transpose of the (random, unit-norm) decoder.
    seed
        Seed of the initial weights (None: torch's global generator). When training, the
        training seed.
    sparse_path
        Top-k family: decode through the selected decoder rows (embedding_bag) and give
        the encoder a sparse backward; False uses dense matmuls (slower, kept as a
        reference).
    provenance
        Where the training data came from (store, layer, model); filled in when training.
    training
        The training settings; filled in when training.
    """

    architecture: str = "topk"
    d_in: int = 0
    d_sae: int | None = None
    expansion_factor: float | None = None
    k: int = 32
    threshold_momentum: float = 0.01
    inference_threshold: float | None = None
    matryoshka_prefixes: list[int] | None = None
    l1_coefficient: float = 5.0
    l0_coefficient: float = 1.0
    jumprelu_bandwidth: float = 1e-3
    jumprelu_init_threshold: float = 1e-3
    k_aux: int | None = None
    auxk_coefficient: float = 1 / 32
    dead_rows_threshold: int = 10_000_000
    normalise_inputs: bool = True
    normalisation_scale: float | None = None
    b_dec_init: str = "geometric_median"
    tied_init: bool = True
    seed: int | None = None
    sparse_path: bool = True
    provenance: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The helper: derive d_sae from the expansion factor when only that is given (and
        # d_in is known: a training config gets d_in from the data later).
        if self.d_sae is None and self.expansion_factor is not None:
            if _is_int(self.d_in) and self.d_in >= 1 and _is_number(self.expansion_factor):
                product = self.d_in * self.expansion_factor
                if float(product).is_integer():
                    self.d_sae = int(product)

    # -- convenience ---------------------------------------------------------------------

    @classmethod
    def from_expansion(cls, d_in: int, expansion_factor: float, **kwargs) -> SAEConfig:
        """``SAEConfig(d_in=d_in, d_sae=d_in * expansion_factor, ...)``, validated.

        Parameters
        ----------
        d_in
            Width of the activations.
        expansion_factor
            d_sae / d_in.
        **kwargs
            Further fields.

        Returns
        -------
        SAEConfig
            The validated config.
        """
        cfg = cls(d_in=d_in, expansion_factor=expansion_factor, **kwargs)
        cfg.validate()
        return cfg

    @classmethod
    def field_names(cls) -> list[str]:
        """The names of the fields, in order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def coerce(cls, value: SAEConfig | dict | None, what: str = "sae") -> SAEConfig:
        """``value`` as a config: a copy of a config, or one built from a dict of fields.

        Unlike ``from_dict`` (which reads checkpoints and tolerates keys from newer
        versions), an unknown key is an error.

        Parameters
        ----------
        value
            A config, a dict of its fields, or None (all defaults).
        what
            How the caller names the argument, for error messages.

        Returns
        -------
        SAEConfig
            A new object; ``value`` is not modified.

        Raises
        ------
        ValueError
            A key is not a field; the message names it and lists the fields.
        """
        return _coerce(cls, value, what)

    @property
    def resolved_k_aux(self) -> int:
        """``k_aux``, or its default d_in // 2 (at least 1)."""
        return self.k_aux if self.k_aux is not None else max(1, self.d_in // 2)

    @property
    def resolved_prefixes(self) -> list[int]:
        """``matryoshka_prefixes``, or the default d_sae/8, d_sae/4, d_sae/2, d_sae."""
        if self.matryoshka_prefixes is not None:
            return [int(m) for m in self.matryoshka_prefixes]
        sizes = [self.d_sae // 2**i for i in (3, 2, 1, 0)]
        return sorted({m for m in sizes if m > 0})

    # -- checks --------------------------------------------------------------------------

    def validate(self) -> SAEConfig:
        """Check every field; the architecture's own fields are checked by its class.

        Returns
        -------
        SAEConfig
            ``self``, when valid.

        Raises
        ------
        bioviz.errors.InputError
            Listing every invalid parameter, each by name (a ValueError).
        """
        errors: list[str] = []
        arch = ARCHITECTURES.get(self.architecture)
        if arch is None:
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
        if arch is not None:
            errors += arch.check_config(self)
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
        if self.seed is not None and not _is_int(self.seed):
            errors.append(f"seed={self.seed!r} must be an integer (or None)")
        for name in ("normalise_inputs", "tied_init", "sparse_path"):
            if not isinstance(getattr(self, name), bool):
                errors.append(f"{name}={getattr(self, name)!r} must be true or false")
        for name in ("provenance", "training"):
            try:
                json.dumps(getattr(self, name), allow_nan=False)
            except (TypeError, ValueError) as err:
                errors.append(f"{name} must be JSON-serialisable: {err}")
        if errors:
            raise InputError("invalid SAEConfig:\n  - " + "\n  - ".join(errors))
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


@dataclass
class OptimConfig:
    """How the Lightning module optimises the SAEs (not part of an SAE's own config; the
    exported ``sae.json`` records it under ``training``).

    Parameters
    ----------
    lr
        Adam learning rate; None: 2e-4 / sqrt(d_sae / 2^14) (Gao et al. 2024). The biases
        get sqrt(d_in) times this rate (they live in normalised input units).
    warmup_steps
        Linear learning-rate warm-up, in steps.
    decay_fraction
        The last fraction of max_steps decays the rate linearly to 0.
    sparsity_warmup_steps
        relu, jumprelu: the L1 / L0 coefficient ramps linearly from 0 to its configured
        value over these steps (the config keeps the configured value).
    grad_clip
        Per-SAE gradient-norm clip; 0 disables it.
    dead_window_rows
        Rows without firing after which a latent counts as dead while training; None: the
        SAE's dead_rows_threshold, capped at one pass over the store.
    resample_dead_every
        Resample dead latents every this many steps; 0: never (AuxK is the default cure).
    """

    lr: float | None = None
    warmup_steps: int = 100
    decay_fraction: float = 0.2
    sparsity_warmup_steps: int = 1000
    grad_clip: float = 1.0
    dead_window_rows: int | None = None
    resample_dead_every: int = 0

    @classmethod
    def coerce(cls, value: OptimConfig | dict | None, what: str = "optim") -> OptimConfig:
        """``value`` as settings: a copy, or built from a dict (an unknown key is an error
        naming it)."""
        return _coerce(cls, value, what)

    def validate(self) -> OptimConfig:
        """Raise :class:`~bioviz.errors.InputError` (a ValueError) listing every invalid
        setting; return self when valid."""
        errors = []
        if self.lr is not None and (not _is_number(self.lr) or not self.lr > 0):
            errors.append(f"lr={self.lr!r} must be > 0 (or None for the default)")
        for name in ("warmup_steps", "sparsity_warmup_steps", "resample_dead_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                errors.append(f"{name}={value!r} must be an integer >= 0")
        if not _is_number(self.decay_fraction) or not 0 <= self.decay_fraction <= 1:
            errors.append(f"decay_fraction={self.decay_fraction!r} must be in [0, 1]")
        if not _is_number(self.grad_clip) or self.grad_clip < 0:
            errors.append(f"grad_clip={self.grad_clip!r} must be >= 0")
        if self.dead_window_rows is not None and (
            not _is_int(self.dead_window_rows) or self.dead_window_rows < 1
        ):
            errors.append(f"dead_window_rows={self.dead_window_rows!r} must be an integer >= 1 (or None)")
        if errors:
            raise InputError("invalid OptimConfig:\n  - " + "\n  - ".join(errors))
        return self


def _coerce(cls, value, what: str):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return dataclasses.replace(value)
    if not isinstance(value, dict):
        raise TypeError(f"{what}: expected a {cls.__name__} or a dict of its fields, got {type(value).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in value if key not in names]
    if unknown:
        others = {c.__name__: c for c in (SAEConfig, OptimConfig) if c is not cls}
        hints = [f"{key!r} is an {name} field" for key in unknown for name, other in others.items()
                 if key in {f.name for f in dataclasses.fields(other)}]
        raise InputError(
            f"{what}: unknown key(s) {', '.join(map(repr, unknown))}; {cls.__name__} fields: "
            f"{', '.join(names)}" + (f" ({'; '.join(hints)})" if hints else "")
        )
    return cls(**value)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite_non_negative(cfg: SAEConfig, *names: str) -> list[str]:
    """Errors for the named fields that are not finite numbers >= 0."""
    errors = []
    for name in names:
        value = getattr(cfg, name)
        if not _is_number(value) or value < 0 or not math.isfinite(value):
            errors.append(f"{name}={value!r} must be a finite number >= 0")
    return errors


def _positive(cfg: SAEConfig, *names: str) -> list[str]:
    """Errors for the named fields that are not numbers > 0."""
    errors = []
    for name in names:
        value = getattr(cfg, name)
        if not _is_number(value) or value <= 0:
            errors.append(f"{name}={value!r} must be > 0")
    return errors
