"""Train an SAE with ``bioviz.train`` under DDP (for tests/test_sae_ddp.py).

    python tests/ddp_job.py STORE OUT_DIR DEVICES STEPS BATCH_PER_PROCESS

Lightning's ``ddp`` strategy starts the other ranks by re-running this script, so it has to
be a script (not a pytest process). Every rank writes ``OUT_DIR/rank{r}.npz`` when training
ends: its rank and world size as the trainer saw them, the store row indices of each of its
batches (in step order) and its dead-latent counters. Rank 0's SAE is exported to
``OUT_DIR/sae``. After ``bioviz.train`` returns (it loads the exported SAE back), each rank
writes ``loaded{r}.txt``, or ``failed{r}.txt`` with the error (ranks > 0 then exit 0: when one
exits non-zero, Lightning kills rank 0); rank 0 waits for the others' files before it exits.

``BIOVIZ_TEST_SLOW_EXPORT=SECONDS`` delays rank 0's export, as a slow filesystem would.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np

import bioviz as bv
from bioviz.sae import OptimConfig, SAEConfig
from bioviz.sae.train import SAEModule

SAE_ARGS = dict(sae=SAEConfig(architecture="topk", expansion_factor=4, k=4),
                optim=OptimConfig(lr=3e-3, warmup_steps=5), seed=0)


class Record(L.Callback):
    def __init__(self, out: Path):
        self.out, self.index = out, []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.index.append(batch[1].numpy().copy())

    def on_train_end(self, trainer, module):
        np.savez(self.out / f"rank{trainer.global_rank}.npz", rank=trainer.global_rank,
                 world_size=trainer.world_size, index=np.stack(self.index),
                 rows_since_fired=module.saes[0].rows_since_fired.numpy())


def _slow_export(seconds: float) -> None:
    export = SAEModule.export

    def slow(self, output_dir):
        time.sleep(seconds)
        return export(self, output_dir)

    SAEModule.export = slow


if __name__ == "__main__":
    store, out, devices, steps, batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("LOCAL_RANK", "0"))  # set by Lightning for the ranks it starts
    if os.environ.get("BIOVIZ_TEST_SLOW_EXPORT"):
        _slow_export(float(os.environ["BIOVIZ_TEST_SLOW_EXPORT"]))
    strategy = {"strategy": "ddp"} if devices > 1 else {}
    try:
        sae, = bv.train(store, max_steps=steps, batch_size=batch, output_dir=str(out / "sae"),
                        trainer={"accelerator": "cpu", "devices": devices, **strategy, "logger": False,
                                 "enable_progress_bar": False, "enable_checkpointing": False,
                                 "callbacks": [Record(out)]},
                        **SAE_ARGS)
        (out / f"loaded{rank}.txt").write_text(f"{float(sae.W_dec.sum())}\n")
    except Exception as e:
        (out / f"failed{rank}.txt").write_text(f"{type(e).__name__}: {e}\n")
        if rank == 0:
            raise
        # a rank > 0 that exits non-zero makes Lightning SIGKILL rank 0, export and all;
        # the test reads the verdict from failed{rank}.txt instead
    finally:
        if rank == 0:  # the other ranks are this process's children: wait for their verdict
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all(
                (out / f"loaded{r}.txt").exists() or (out / f"failed{r}.txt").exists() for r in range(devices)
            ):
                time.sleep(0.1)
