"""``bioviz.train``: fit SAEs on a store from Python (the CLI's ``bioviz fit`` runs the same
LightningModule and DataModule through LightningCLI)."""

from __future__ import annotations

import lightning as L

from .data import ActivationDataModule
from .io import load_sae
from .train import SAEModule


def train(store, layer: str | None = None, *, max_steps: int = 1000, batch_size: int = 4096,
          output_dir: str = "runs/sae", trainer: dict | None = None, seed: int = 0,
          buffer_rows: int = 262_144, ckpt_path: str | None = None, **sae_args):
    """Train one SAE (or a sweep, ``sweep=[{...}, ...]``) on ``layer`` of ``store``.

    ``sae_args`` go to :class:`SAEModule` (architecture, expansion_factor, k, lr, ...);
    ``trainer`` to ``lightning.Trainer`` (accelerator, devices, strategy, num_nodes,
    log_every_n_steps, logger, ...). ``ckpt_path`` resumes a killed run from a Lightning
    checkpoint. Returns the trained SAEs, loaded back from ``output_dir``.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    dm = ActivationDataModule(store, layer, batch_size=batch_size, buffer_rows=buffer_rows, seed=seed)
    module = SAEModule(output_dir=output_dir, seed=seed, **sae_args)
    opts = {"max_steps": max_steps, "logger": True, "enable_model_summary": False,
            "log_every_n_steps": 50, "deterministic": True, "default_root_dir": output_dir,
            **(trainer or {})}
    tr = L.Trainer(**opts)
    tr.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    return [load_sae(f"{output_dir}/{name}") for name in module.names]
