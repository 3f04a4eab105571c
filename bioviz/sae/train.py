"""The LightningModule that trains one SAE, or several on the same batches (a k sweep):
science here, engineering (devices, DDP, checkpoints, logging) in the Trainer."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch

from .base import SparseAutoencoder
from .config import SAEConfig
from .io import build_sae, save_sae


class SAEModule(L.LightningModule):
    """Train sparse autoencoders on the batches of an :class:`ActivationDataModule`.

    Args:
        architecture: ``topk``, ``batchtopk``, ``relu``, ``jumprelu`` or ``matryoshka``.
        expansion_factor: d_sae = expansion_factor × d_in (ignored when ``d_sae`` is given).
        d_sae: dictionary size.
        k: active latents per row (top-k family).
        sweep: overrides of the base settings, one SAE each (``[{k: 16}, {k: 64}]``); all
            train on the same batches in one pass over the data.
        options: further SAEConfig fields for every SAE (``matryoshka_prefixes``,
            ``l1_coefficient``, ``auxk_coefficient``, ``b_dec_init``, ...).
        lr: Adam learning rate; default 2e-4 / sqrt(d_sae / 2^14) (Gao et al. 2024).
        warmup_steps: linear learning-rate warm-up.
        decay_fraction: the last fraction of ``max_steps`` decays the rate linearly to 0.
        sparsity_warmup_steps: the L1/L0 coefficient ramps linearly from 0 (relu, jumprelu).
        grad_clip: per-SAE gradient-norm clip (0 disables).
        dead_window_rows: rows without firing after which a latent counts as dead (default:
            10M rows as in Gao et al., or one pass over a smaller store).
        resample_dead_every: resample dead latents every N steps (0: never; AuxK is the default cure).
        output_dir: where the final SAEs are written (safetensors + JSON), one folder each.
        seed: initial weights.
    """

    def __init__(self, architecture: str = "topk", expansion_factor: float = 16, d_sae: int | None = None,
                 k: int = 32, sweep: list[dict] | None = None, options: dict | None = None,
                 lr: float | None = None, warmup_steps: int = 100, decay_fraction: float = 0.2,
                 sparsity_warmup_steps: int = 1000, grad_clip: float = 1.0,
                 dead_window_rows: int | None = None, resample_dead_every: int = 0,
                 output_dir: str = "runs/sae", seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.saes = torch.nn.ModuleList()
        self.names: list[str] = []

    # -- building, once the data says what d_in is -------------------------------------

    def configs(self, d_in: int, n_rows: int) -> list[tuple[str, SAEConfig]]:
        hp = self.hparams
        window = hp.dead_window_rows or min(10_000_000, n_rows)
        base = {"architecture": hp.architecture, "d_in": d_in, "k": hp.k, "seed": hp.seed,
                "dead_rows_threshold": window, **(hp.options or {})}
        if hp.d_sae is not None:
            base["d_sae"] = hp.d_sae
        else:
            base["expansion_factor"] = hp.expansion_factor
        out = []
        for over in hp.sweep or [{}]:
            cfg = SAEConfig(**{**base, **over}).validate()
            name = cfg.architecture + "".join(f"_{k}{v}" for k, v in sorted(over.items())) if over else cfg.architecture
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
        hp = self.hparams
        d_sae = self.saes[0].d_sae
        lr = hp.lr or 2e-4 / math.sqrt(d_sae / 2**14)
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
            warm = min(1.0, (step + 1) / max(1, hp.warmup_steps))
            if total is None or hp.decay_fraction <= 0:
                return warm
            decay_start = total * (1 - hp.decay_fraction)
            return warm * min(1.0, max(0.0, (total - step) / max(1.0, total - decay_start)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def training_step(self, batch, batch_idx):
        x, index = batch
        if not torch.isfinite(x).all():
            bad = index[~torch.isfinite(x).all(1)].tolist()
            raise ValueError(
                f"NaN/Inf in the training batch at step {self.global_step}: store rows "
                f"{min(bad)}..{max(bad)} ({len(bad)} rows, e.g. {bad[:5]}); re-extract with "
                "nonfinite='drop' or fix the layer"
            )
        ramp = min(1.0, (self.global_step + 1) / max(1, self.hparams.sparsity_warmup_steps))
        log_now = self.global_step % max(1, self.trainer.log_every_n_steps) == 0
        total = x.new_zeros(())
        for name, sae in zip(self.names, self.saes):
            _set_sparsity_ramp(sae, ramp)
            out = sae(x)
            losses = sae.loss(x, out)
            total = total + losses["loss"]
            if log_now:
                self.log_dict(_metrics(name, sae, x, out, losses), on_step=True, prog_bar=False)
        return total

    def on_before_optimizer_step(self, optimizer) -> None:
        for sae in self.saes:
            sae.remove_parallel_grads_()
            if self.hparams.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(sae.parameters(), self.hparams.grad_clip)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        for sae in self.saes:
            sae.normalise_decoder_()
        every = self.hparams.resample_dead_every
        if every and (self.global_step % every == 0):
            self._resample(batch[0])

    def _resample(self, x) -> None:
        opt = self.optimizers().optimizer
        for sae in self.saes:
            idx = sae.resample_dead_(x)
            if idx.numel():
                _reset_adam_rows(opt, sae, idx)

    # -- the artifact --------------------------------------------------------------------

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            self.export(self.hparams.output_dir)
        # every rank may read the artifact next (bioviz.train does): wait until it is written
        self.trainer.strategy.barrier("bioviz-sae-export")

    def export(self, output_dir) -> list[Path]:
        """Write every SAE as safetensors + JSON (architecture, dims, k/thresholds,
        normalisation, training settings, provenance)."""
        paths = []
        training = {k: v for k, v in self.hparams.items() if k != "output_dir"}
        training["steps"] = int(self.global_step)
        for name, sae in zip(self.names, self.saes):
            sae.cfg.training = training
            paths.append(save_sae(sae, Path(output_dir) / name))
        return paths


def _set_sparsity_ramp(sae: SparseAutoencoder, ramp: float) -> None:
    """Warm the L1/L0 coefficient up from 0 (the configured value is kept in ``_target``)."""
    for attr in ("l1_coefficient", "l0_coefficient"):
        if hasattr(type(sae), attr):
            target = sae.__dict__.setdefault(f"_{attr}_target", getattr(sae, attr))
            setattr(sae, attr, target * ramp)


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
