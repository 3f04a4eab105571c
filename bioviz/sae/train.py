"""Training sparse autoencoders with Lightning: :func:`train` (``bioviz.train``) from Python,
and the :class:`SAEModule` it runs, which the command line's LightningCLI runs too.

Science here, engineering (devices, DDP, checkpoints, logging) in the Trainer. An SAE's
settings are one typed :class:`~bioviz.sae.SAEConfig`; how it is optimised, an
:class:`~bioviz.sae.OptimConfig`; a sweep trains several SAEs on the same batches.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ..errors import InputError
from ..lock import ArtifactLock
from ..trainer import quiet_lightning, trainer_defaults
from .base import SparseAutoencoder
from .config import OptimConfig, SAEConfig
from .data import ActivationDataModule
from .io import build_sae, load_sae, save_sae

__all__ = ["SAEModule", "train"]

#: d_sae = 16 x d_in when the SAE config gives neither d_sae nor expansion_factor.
DEFAULT_EXPANSION_FACTOR = 16
# SAEConfig fields that training fills in; a sweep cannot vary them.
_FILLED_FIELDS = ("d_in", "provenance", "training")
#: an SAE's folder name: letters, digits, '.', '_', '-', not starting with a dot
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def train(store, layer: str | None = None, *, sae: SAEConfig | dict | None = None,
          sweep: list[dict[str, Any]] | None = None, optim: OptimConfig | dict | None = None,
          max_steps: int = 1000, batch_size: int = 4096, output_dir: str = "runs/sae",
          trainer: dict | None = None, seed: int = 0, buffer_rows: int = 262_144,
          ckpt_path: str | None = None) -> list[SparseAutoencoder]:
    """Train one SAE (or a sweep of them) on one layer of an activation store.

    ``bioviz train --config STUDY.yaml`` runs the same :class:`SAEModule` and
    :class:`~bioviz.sae.data.ActivationDataModule` through LightningCLI, with the same
    ``sae``, ``sweep`` and ``optim`` sections (under ``model``). Training prints only a
    progress bar (steps, and each SAE's FVU); metrics go to CSV.

    Parameters
    ----------
    store
        Path of the :class:`~bioviz.store.ActivationStore`.
    layer
        Which stored layer (may be omitted when the store holds one).
    sae
        The SAE: an :class:`~bioviz.sae.SAEConfig` or a dict of its fields
        (``{"architecture": "topk", "expansion_factor": 16, "k": 32}``). ``d_in`` comes from
        the store; with neither ``d_sae`` nor ``expansion_factor``, d_sae = 16 x d_in.
    sweep
        Overrides of ``sae``, one SAE each (``[{"k": 16}, {"k": 64}]``); all train on the
        same batches in one pass over the data, each into its own folder
        (``topk_k16``, ...).
    optim
        Optimiser settings: an :class:`~bioviz.sae.OptimConfig` or a dict of its fields
        (lr, warmup_steps, decay_fraction, sparsity_warmup_steps, grad_clip,
        dead_window_rows, resample_dead_every).
    max_steps
        Optimiser steps (the store is cycled through as often as needed).
    batch_size
        Rows per step, per process.
    output_dir
        Where the SAEs are written (``sae.json`` + ``sae.safetensors``, one folder each;
        the name of the architecture, plus the sweep's overrides) and, unless ``trainer``
        says otherwise, the CSV metrics (``lightning_logs/version_*/metrics.csv``).
    trainer
        Further ``lightning.Trainer`` arguments (accelerator, devices, strategy, num_nodes,
        log_every_n_steps, logger, callbacks, enable_progress_bar, ...).
    seed
        Seeds the initial weights, the shuffle order and Lightning (``seed_everything``).
    buffer_rows
        Rows held in memory for shuffling.
    ckpt_path
        A Lightning checkpoint to resume a killed run from (with ``trainer={"callbacks":
        [ModelCheckpoint(...)]}`` writing them); the result equals an uninterrupted run.

    Returns
    -------
    list of SparseAutoencoder
        The trained SAEs, loaded back from ``output_dir`` (one, or one per sweep entry).

    Raises
    ------
    ValueError
        Invalid settings (an unknown key in ``sae``, ``optim`` or a sweep entry; a value
        out of range, each named), before training starts; non-finite activations in a
        batch, naming the step and the store rows.

    Examples
    --------
    A store of a small model's activations, then a TopK SAE with 4 x as many latents:

    >>> import tempfile, torch
    >>> import bioviz as bv
    >>> from bioviz.adapters import TorchAdapter
    >>> folder = tempfile.mkdtemp()
    >>> model = torch.nn.Sequential(torch.nn.Linear(16, 16))
    >>> data = [{"x": x} for x in torch.randn(2000, 16)]
    >>> store = bv.extract(TorchAdapter(model, input_key="x"), data, "0", f"{folder}/store",
    ...                    progress=False)
    >>> sae, = bv.train(store.path, "0", sae={"architecture": "topk", "expansion_factor": 4, "k": 4},
    ...                 optim={"lr": 3e-3}, max_steps=20, batch_size=200,
    ...                 output_dir=f"{folder}/sae", trainer={"enable_progress_bar": False})
    >>> sae.architecture, sae.d_in, sae.d_sae, sae.cfg.k
    ('topk', 16, 64, 4)
    >>> sae.cfg.training["steps"], sae.cfg.provenance["layer"]
    (20, '0')

    A sweep over k trains two SAEs on the same batches:

    >>> saes = bv.train(store.path, sae={"expansion_factor": 2}, sweep=[{"k": 2}, {"k": 8}],
    ...                 max_steps=5, batch_size=200, output_dir=f"{folder}/sweep",
    ...                 trainer={"enable_progress_bar": False})
    >>> [s.cfg.k for s in saes]
    [2, 8]
    """
    sae = SAEConfig.coerce(sae, "sae")
    optim = OptimConfig.coerce(optim, "optim")
    L.seed_everything(seed, workers=True, verbose=False)
    dm = ActivationDataModule(store, layer, batch_size=batch_size, buffer_rows=buffer_rows, seed=seed)
    module = SAEModule(sae=sae, sweep=sweep, optim=optim, output_dir=output_dir, seed=seed)
    opts = {"max_steps": max_steps, "enable_model_summary": False, "log_every_n_steps": 50,
            "deterministic": True, "default_root_dir": output_dir, **(trainer or {})}
    opts.update(trainer_defaults(opts))
    with quiet_lightning():
        tr = L.Trainer(**opts)
        tr.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    return [load_sae(f"{output_dir}/{name}") for name in module.names]


class SAEModule(L.LightningModule):
    """Train sparse autoencoders on the batches of an :class:`ActivationDataModule`.

    One SAE, or several on the same batches (a sweep). The SAEs are built in ``setup``,
    once the data says what ``d_in`` is; every config is validated then, before the first
    step.

    Parameters
    ----------
    sae
        The SAE's settings, an SAEConfig (architecture, sizes, k, coefficients, ...). d_in
        comes from the data. Neither d_sae nor expansion_factor given: expansion_factor 16.
        Default: a TopK SAE with k 32.
    sweep
        Overrides of sae, one SAE each ([{k: 16}, {k: 64}]); all train on the same batches
        in one pass over the data. The keys must be SAEConfig fields.
    optim
        How the SAEs are optimised, an OptimConfig (learning rate and its schedule,
        sparsity warm-up, gradient clipping, dead latents).
    output_dir
        Where the final SAEs are written (safetensors + JSON), one folder each.
    seed
        Seed of the initial weights (each SAE's ``SAEConfig.seed``; a sweep may vary it).
    """

    def __init__(self, sae: SAEConfig | None = None, sweep: list[dict[str, Any]] | None = None,
                 optim: OptimConfig | None = None, output_dir: str = "runs/sae", seed: int = 0):
        super().__init__()
        # coerce: a copy, and dicts are accepted too (a checkpoint's hparams hold dicts)
        sae = SAEConfig.coerce(sae, "sae")
        if sae.d_sae is None and sae.expansion_factor is None:
            sae.expansion_factor = DEFAULT_EXPANSION_FACTOR
        if sae.seed is not None and sae.seed != seed:
            raise InputError(f"sae: seed={sae.seed!r} disagrees with the training seed={seed!r}; "
                             "give the seed once, as seed")
        optim = OptimConfig.coerce(optim, "optim").validate()
        sweep = _check_sweep(sweep)
        self.sae_config, self.sweep, self.optim_config = sae, sweep, optim
        self.output_dir, self.seed = output_dir, seed
        # plain dicts: checkpoints are read with weights_only=True, which refuses dataclasses
        self.save_hyperparameters({"sae": dataclasses.asdict(sae), "sweep": sweep,
                                   "optim": dataclasses.asdict(optim), "output_dir": output_dir,
                                   "seed": seed})
        self.saes = torch.nn.ModuleList()
        self.names: list[str] = []

    # -- building, once the data says what d_in is -------------------------------------

    def configs(self, d_in: int, n_rows: int) -> list[tuple[str, SAEConfig]]:
        """The name (output folder) and validated config of each SAE to train.

        Parameters
        ----------
        d_in
            Width of the training activations.
        n_rows
            Rows in the store (the dead-latent window is capped at one pass).

        Returns
        -------
        list of (str, SAEConfig)
            One entry, or one per sweep entry.
        """
        given = self.sae_config
        if given.d_in and given.d_in != d_in:
            raise InputError(f"sae: d_in={given.d_in!r} but the training data has d={d_in}")
        window = self.optim_config.dead_window_rows
        if window is None and isinstance(given.dead_rows_threshold, int):
            window = min(given.dead_rows_threshold, n_rows)
        base = {**dataclasses.asdict(given), "d_in": d_in, "seed": self.seed}
        if window is not None:
            base["dead_rows_threshold"] = window
        out = []
        for i, over in enumerate(self.sweep or [{}]):
            fields = {**base, **over}
            # a sweep over sizes replaces the base's way of giving the size
            if "d_sae" in over and "expansion_factor" not in over:
                fields["expansion_factor"] = None
            if "expansion_factor" in over and "d_sae" not in over:
                fields["d_sae"] = None
            try:
                cfg = SAEConfig(**fields).validate()
            except ValueError as err:
                if not over:
                    raise
                raise InputError(f"sweep[{i}]={over}: {err}") from None
            name = _folder_name(cfg.architecture, over)
            if not _SAFE_NAME.fullmatch(name):
                where = f"sweep[{i}]: " if over else ""
                raise InputError(f"{where}the SAE's folder name {name!r} is not a plain file name "
                                 "(letters, digits, '.', '_', '-')")
            same = next((j for j, (other, _) in enumerate(out) if other == name), None)
            if same is not None:
                raise InputError(f"sweep[{i}]={over} gives the folder name {name!r}, as sweep[{same}] "
                                 "does; each SAE of a sweep needs its own settings")
            out.append((name, cfg))
        return out

    def setup(self, stage: str) -> None:
        if len(self.saes):
            return
        dm = self.trainer.datamodule
        for name, cfg in self.configs(dm.d_in, dm.store.n_rows):
            cfg.provenance = dm.provenance()
            self.names.append(name)
            self.saes.append(build_sae(cfg))

    def on_fit_start(self) -> None:
        # data-dependent init, skipped when resuming (the checkpoint holds the fitted state)
        if self.trainer.ckpt_path is None and self.global_step == 0:
            sample = self.trainer.datamodule.sample().to(self.device)
            for sae in self.saes:
                sae.fit_normalisation(sample)
                sae.init_from_data(sample)

    # -- optimisation ------------------------------------------------------------------

    def configure_optimizers(self):
        opt_cfg = self.optim_config
        d_sae = self.saes[0].d_sae
        lr = opt_cfg.lr or 2e-4 / math.sqrt(d_sae / 2**14)
        # Biases live in normalised input units (per-element RMS ~1) while weight entries are
        # ~1/sqrt(d_in): give the biases a sqrt(d_in) larger step so both move alike (without
        # it the biases lag and early FVU trails SAELens/dictionary_learning by ~0.06).
        biases = [p for sae in self.saes for p in (sae.b_enc, sae.b_dec)]
        ids = {id(p) for p in biases}
        weights = [p for p in self.saes.parameters() if id(p) not in ids]
        opt = torch.optim.Adam([{"params": weights},
                                {"params": biases, "lr": lr * math.sqrt(self.saes[0].d_in)}],
                               lr=lr, betas=(0.9, 0.999))
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else None

        def schedule(step: int) -> float:
            warm = min(1.0, (step + 1) / max(1, opt_cfg.warmup_steps))
            if total is None or opt_cfg.decay_fraction <= 0:
                return warm
            decay_start = total * (1 - opt_cfg.decay_fraction)
            return warm * min(1.0, max(0.0, (total - step) / max(1.0, total - decay_start)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def sparsity_scale(self) -> float:
        """The sparsity warm-up at this step: the L1/L0 coefficient's factor, 0 -> 1."""
        return min(1.0, (self.global_step + 1) / max(1, self.optim_config.sparsity_warmup_steps))

    def training_step(self, batch, batch_idx):
        x, index = batch
        if not torch.isfinite(x).all():
            bad = index[~torch.isfinite(x).all(1)].tolist()
            raise InputError(
                f"NaN/Inf in the training batch at step {self.global_step}: store rows "
                f"{min(bad)}..{max(bad)} ({len(bad)} rows, e.g. {bad[:5]}); re-extract with "
                "nonfinite='drop' or fix the layer"
            )
        ramp = self.sparsity_scale()
        # the metrics cost a pass over the codes: computed only on the steps Lightning writes to its
        # loggers (its rule, checked after this step: batches stepped + 1, a multiple of
        # log_every_n_steps); a rule of our own missed them on stores of a few batches per epoch
        log_now = self.trainer._logger_connector.should_update_logs
        total = x.new_zeros(())
        for name, sae in zip(self.names, self.saes):
            out = sae(x)
            losses = sae.loss(x, out, sparsity_scale=ramp)
            total = total + losses["loss"]
            if log_now:
                self.log_dict(_metrics(name, sae, x, out, losses), on_step=True, prog_bar=False)
        return total

    def on_before_optimizer_step(self, optimizer) -> None:
        for sae in self.saes:
            sae.remove_parallel_grads_()
            if self.optim_config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(sae.parameters(), self.optim_config.grad_clip)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        for sae in self.saes:
            sae.normalise_decoder_()
        every = self.optim_config.resample_dead_every
        if every and (self.global_step % every == 0):
            self._resample(batch[0])

    def _resample(self, x) -> None:
        opt = self.optimizers().optimizer
        for sae in self.saes:
            idx = sae.resample_dead_(x)
            if idx.numel():
                _reset_adam_rows(opt, sae, idx)

    # -- the artifact --------------------------------------------------------------------

    def configure_callbacks(self):
        # one training per output folder: the lock is held from setup to teardown
        return [_OutputLock(self.output_dir)]

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            self.export(self.output_dir)
        # every rank may read the artifact next (bioviz.train does): wait until it is written
        self.trainer.strategy.barrier("bioviz-sae-export")

    def export(self, output_dir) -> list[Path]:
        """Write every SAE as safetensors + JSON.

        ``sae.json`` holds the SAE's config (architecture, dims, k/thresholds, fitted
        normalisation, provenance) and, under ``training``, the optimiser settings, the
        sweep, the seed and the number of steps taken.

        Parameters
        ----------
        output_dir
            One folder per SAE is written in it, named as ``self.names``.

        Returns
        -------
        list of pathlib.Path
            The folders.
        """
        training = {**dataclasses.asdict(self.optim_config), "sweep": self.sweep,
                    "seed": self.seed, "steps": int(self.global_step)}
        paths = []
        for name, sae in zip(self.names, self.saes):
            sae.cfg.training = training
            paths.append(save_sae(sae, _inside(output_dir, name)))
        return paths


def _folder_name(architecture: str, over: dict[str, Any]) -> str:
    """An SAE's folder: the architecture, then each swept field and its value, every value
    written with letters, digits, '.', '_' and '-' only (a list joins its items with '-';
    any other character becomes '-')."""
    def word(value) -> str:
        if isinstance(value, (list, tuple)):
            return "-".join(word(v) for v in value)
        return re.sub(r"[^A-Za-z0-9._-]", "-", str(value))

    return architecture + "".join(f"_{k}{word(v)}" for k, v in sorted(over.items()))


def _inside(output_dir, name: str) -> Path:
    """``output_dir / name``, refused unless it is a folder directly inside ``output_dir``."""
    root = Path(output_dir)
    path = root / name
    # lexically (a folder the user links elsewhere stays theirs to link)
    if not _SAFE_NAME.fullmatch(name) or Path(os.path.normpath(path.absolute())).parent != Path(
            os.path.normpath(root.absolute())):
        raise InputError(f"SAE folder {name!r} would be written outside {root}; a folder name is "
                         "letters, digits, '.', '_' and '-'")
    return path


class _OutputLock(L.Callback):
    """The output folder's writer lock (:mod:`bioviz.lock`), held by the global-zero rank
    while it trains and exports: a second training into the same folder is refused."""

    def __init__(self, output_dir):
        self.output_dir = Path(output_dir)
        self.lock: ArtifactLock | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero and self.lock is None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.lock = ArtifactLock(self.output_dir, "SAE output folder").acquire()

    def _release(self) -> None:
        lock, self.lock = self.lock, None
        if lock is not None:
            lock.release()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._release()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._release()


def _check_sweep(sweep) -> list[dict[str, Any]] | None:
    """The sweep as a list of plain dicts; an unknown or filled-in key is an error naming it."""
    if not sweep:
        return None
    if not isinstance(sweep, (list, tuple)):
        raise TypeError(f"sweep: expected a list of dicts of SAEConfig fields, got {type(sweep).__name__}")
    fields = SAEConfig.field_names()
    out = []
    for i, over in enumerate(sweep):
        if not isinstance(over, dict):
            raise TypeError(f"sweep[{i}]: expected a dict of SAEConfig fields, got {over!r}")
        unknown = [key for key in over if key not in fields]
        if unknown:
            raise InputError(f"sweep[{i}]: unknown key(s) {', '.join(map(repr, unknown))}; "
                             f"SAEConfig fields: {', '.join(fields)}")
        filled = [key for key in over if key in _FILLED_FIELDS]
        if filled:
            raise InputError(f"sweep[{i}]: {', '.join(map(repr, filled))} cannot be swept "
                             "(training fills it in)")
        out.append(dict(over))
    return out


@torch.no_grad()
def _metrics(name: str, sae: SparseAutoencoder, x, out, losses) -> dict:
    x = x.to(out.x_hat.dtype)
    codes = out.sparse
    fired_share = torch.zeros(sae.d_sae, device=x.device).index_add_(
        0, codes.cols[codes.values > 0], torch.ones_like(codes.values[codes.values > 0]))
    fired_share /= x.shape[0]
    return {
        f"{name}/fvu": losses["fvu"].float(),
        f"{name}/mse": losses["mse"].detach().float(),
        f"{name}/l0": codes.l0().float().mean(),
        f"{name}/dead_fraction": sae.dead_mask().float().mean(),
        f"{name}/dense_fraction": (fired_share > 0.1).float().mean(),
        f"{name}/cosine": torch.nn.functional.cosine_similarity(out.x_hat, x, dim=1).mean(),
        f"{name}/l2_ratio": (out.x_hat.norm(dim=1) / x.norm(dim=1).clamp_min(1e-12)).mean(),
        **{f"{name}/{k}": v.detach().float() for k, v in losses.items() if k not in ("fvu", "mse", "loss")},
    }


def _reset_adam_rows(opt, sae: SparseAutoencoder, idx) -> None:
    """Zero Adam's moments for resampled latents, so old momentum does not undo the reset."""
    for p, sl in ((sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,)), (sae.W_dec, (idx,))):
        state = opt.state.get(p)
        if state:
            for key in ("exp_avg", "exp_avg_sq"):
                state[key][sl] = 0
