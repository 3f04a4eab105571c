"""The engineering around Lightning's Trainer that every bioviz loop shares (extraction's
prediction loop, SAE training): a step-counting progress bar and quiet logs, so a run
prints bioviz's own lines and progress bars, not Lightning's advice."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings

from lightning.pytorch.callbacks import Callback, ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import CSVLogger

__all__ = ["StepProgressBar", "quiet_lightning", "trainer_defaults"]


def trainer_defaults(opts: dict) -> dict:
    """What bioviz adds to ``lightning.Trainer`` arguments ``opts`` unless they say otherwise:
    an explicit CSV logger under ``default_root_dir`` (Lightning's default logger warns that
    TensorBoard is missing) and a :class:`StepProgressBar` after the given callbacks."""
    out = {}
    if opts.get("logger") in (None, True):
        out["logger"] = CSVLogger(save_dir=opts.get("default_root_dir") or os.getcwd())
    callbacks = opts.get("callbacks") or []
    callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
    if opts.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
        out["callbacks"] = [*callbacks, StepProgressBar()]
    return out


class StepProgressBar(TQDMProgressBar):
    """Training progress in optimiser steps against ``max_steps`` (``step 120/600``), with
    each SAE's latest FVU.

    Lightning's own bar counts batches per epoch, which an iterable store does not have
    (it shows ``Epoch 7/-2``). Pass it in the trainer's callbacks; :func:`train` does.
    """

    def init_train_tqdm(self) -> Tqdm:
        return Tqdm(desc="", position=2 * self.process_position, disable=self.is_disabled,
                    leave=True, dynamic_ncols=True, file=sys.stdout, smoothing=0, unit="step",
                    bar_format="step {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining}{postfix}")

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)
        bar.initial = bar.n = trainer.global_step  # a resumed run starts where it stopped
        if not bar.disable:
            bar.refresh()

    def on_train_epoch_start(self, trainer, *_) -> None:
        pass  # one bar for the whole run, not one per pass over the store

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar, n = self.train_progress_bar, trainer.global_step
        if self.is_enabled and not bar.disable and (n % self.refresh_rate == 0 or n == bar.total):
            bar.n = n
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass

    def get_metrics(self, trainer, pl_module) -> dict[str, str]:
        return {k: f"{float(v):.3f}" for k, v in trainer.callback_metrics.items() if k.endswith("/fvu")}


@contextlib.contextmanager
def quiet_lightning():
    """Within: Lightning prints warnings but not its info lines (device summary, "Tip"
    advertisements, "`Trainer.fit` stopped"), nor the torch ``LeafSpec`` deprecation it
    triggers, nor its advice that does not apply to bioviz's loops (worker counts for a
    loader that reads a store, a custom batch sampler, a prediction loop that returns
    nothing); levels and filters are restored on exit."""
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
             "lightning.pytorch.accelerators.cuda")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
                                category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
        for advice in ("does not have many workers", "custom batch sampler", "predict returned None",
                       "predict_dataloader"):
            warnings.filterwarnings("ignore", message=f".*{re.escape(advice)}.*")
        for lg in loggers:
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
