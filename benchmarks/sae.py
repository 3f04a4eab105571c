"""SAE training: throughput and FVU against SAELens (and dictionary_learning) on the same
batches, closeness to the machine, peak memory against store size.

    python benchmarks/run.py sae

Same work on every side: TopK, d_in 512, 16x expansion (d_sae 8192), k 32, batch 4096,
the same number of steps, Adam (0.9, 0.999) at the same learning rate with the same
warm-up / linear-decay schedule, gradient-norm clip 1.0, inputs scaled to mean row norm
sqrt(d_in) (SAELens ``normalize_activations="expected_average_only_in"``; dictionary_learning
uses its own unit-mean-squared-norm scaling), AuxK on with the same dead-latent window, and
the same starting weights: bioviz's (seeded Gaussian decoder rows at unit norm, encoder = the
decoder transposed, b_enc 0, b_dec = geometric median of the init rows) copied into the others,
converted to their input units. That is every library's own scheme (for SAELens with
``decoder_init_norm=1.0`` rather than its 0.1 heuristic, with which reconstructions start at
~1% of the input scale and FVU is still ~1.0 after the few steps a CPU benchmark affords), but
one draw: after 12 steps one library's FVU is 0.49 from seed 0 and 0.67 from seeds 1 and 2, so
separate draws would compare luck, not training. Everything else is each library's own default
(AuxK weighting, SAELens's ``rescale_acts_by_decoder_norm`` and dense decode,
dictionary_learning's LR schedule (its first step has LR 0), bioviz's sparse encoder backward
and embedding_bag decode).

Closeness to the machine, two figures that must not be confused:

* ``sae_limit_fraction``: bioviz's training examples/s divided by the physical limit in
  examples/s, one dense encoder matmul per example ([n, d_in] x [d_in, d_sae]) at the
  ``torch.mm`` rate measured in the same run, between the same steps (both averaged over the
  timed steps). No TopK training step can beat that limit, since choosing the top k needs
  every pre-activation, which is that matmul; so the figure is at most ~1, and 0.25 means a
  step costs four encoder matmuls. ``sae_limit_fraction_fastest_step`` is the same ratio of
  the fastest steps.
* ``sae_flops_fraction`` is *not* a fraction of the machine: it is the dense-equivalent FLOP
  rate of a bioviz step (12 n d_in d_sae, what the step would cost if every matmul were dense:
  forward encoder and decoder, and twice each backward) divided by one dense matmul's FLOP
  rate. bioviz's sparse kernels skip most of that work (the decode and the encoder's backward
  touch only the k active latents), so it reads well above 1 (~4) by construction. It says
  how much dense work the sparse kernels avoid, not how close to the hardware the step runs.

Memory: a fresh process trains (the same steps and ``buffer_rows``) on a store of 200 MiB of
float16 activations, then on one 8x larger; ``sae_peak_rss_ratio_8x`` compares their peak RSS
(VmHWM), ``sae_loop_peak_rss_ratio_8x`` the peak of the training loop alone (the init's
float64 geometric median peaks higher and would hide growth in the loop).

Takes ~4 min on an idle 2-core CPU (20 steps; BIOVIZ_SAE_BENCH_STEPS changes it,
BIOVIZ_SAE_BENCH_DICTIONARY_LEARNING=0 leaves dictionary_learning out).

How the runs are interleaved: bioviz trains through ``bioviz.train`` (ActivationStore ->
ActivationDataModule -> SAEModule -> Lightning Trainer, the user's path). A callback, after
each bioviz step, hands that very batch to one SAELens training step (``SAETrainer.step``,
driven the way SAELens's own ``fit`` / ``MultiSAETrainer`` drive it), then one
dictionary_learning step (``TopKTrainer.update``, as its ``trainSAE`` loop does), then times
one plain ``torch.mm`` of the encoder's shape. So all sides see the same rows in the same
order, and load from other jobs on the machine hits every side alike.

Throughput = training rows / seconds of the training loop, one-time setup excluded on every
side (imports, store opening, normalisation fit, b_dec init, the first WARMUP_STEPS steps,
which include first-call allocations and dictionary_learning's geometric-median init). A
bioviz step's time runs from the end of the previous peer steps to the end of its own step,
so it includes reading the batch from the store and Lightning's per-step work.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

JOB = Path(__file__).with_name("sae_job.py")
# the figures this group must report (benchmarks/run.py checks)
KEYS = ("sae_vs_saelens_throughput", "sae_fvu", "saelens_fvu", "sae_flops_fraction", "sae_limit_fraction",
        "sae_peak_rss_ratio_8x", "sae_loop_peak_rss_ratio_8x")

STEPS = int(os.environ.get("BIOVIZ_SAE_BENCH_STEPS", "20"))
WARMUP_STEPS = 2  # excluded from timing on every side
LR = 1e-3
LR_WARMUP = 4  # linear learning-rate warm-up (steps), every side
DECAY_FRACTION = 0.2  # the last 20% of steps decay linearly to 0, every side
DEAD_STEPS = 8  # a latent unfired for this many steps counts as dead (AuxK), every side
HELDOUT_ROWS = 16384
WITH_DICTIONARY_LEARNING = os.environ.get("BIOVIZ_SAE_BENCH_DICTIONARY_LEARNING", "1") != "0"
RSS_STEPS, RSS_BUFFER_ROWS = 24, 65536  # 24 x 4096 rows: the buffer is refilled once
RSS_BASE_ITEMS = 200  # x 1024 rows x 512 x float16 = 210 MB of activations; 8x = 1.68 GB


def _fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    from bioviz.sae import fraction_of_variance_unexplained

    return float(fraction_of_variance_unexplained(x, x_hat))


class _SAELens:
    """SAELens 6.x: ``TopKTrainingSAE`` trained by ``SAETrainer.step`` (its own forward, loss,
    AuxK, dead-latent bookkeeping, clip, Adam and LR schedule)."""

    name = "saelens"

    def __init__(self, start, init_rows: torch.Tensor, steps: int):
        from sae_job import BATCH, D_IN, K
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.config import LoggingConfig, SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

        sae = TopKTrainingSAE(TopKTrainingSAEConfig(
            d_in=D_IN, d_sae=start.d_sae, k=K, dtype="float32", device="cpu",
            normalize_activations="expected_average_only_in", decoder_init_norm=1.0))
        cfg = SAETrainerConfig(
            total_training_samples=steps * BATCH, train_batch_size_samples=BATCH, lr=LR, lr_end=LR,
            lr_scheduler_name="constant", lr_warm_up_steps=LR_WARMUP,
            lr_decay_steps=int(steps * DECAY_FRACTION), adam_beta1=0.9, adam_beta2=0.999,
            device="cpu", dead_feature_window=DEAD_STEPS, logger=LoggingConfig(log_to_wandb=False))
        batches = init_rows.split(BATCH)
        self.trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(batches))
        # what SAETrainer.fit does first, on the rows bioviz fits its normalisation on
        self.trainer.activation_scaler.estimate_scaling_factor(D_IN, iter(batches), len(batches))
        # the shared starting point (SAELens's own scheme with decoder_init_norm=1.0, but
        # another draw; b_dec: 6.x starts it at zero, earlier releases had
        # b_dec_init_method="geometric_median"); same normalised units as bioviz's
        scale = self.trainer.activation_scaler.scaling_factor
        with torch.no_grad():
            sae.W_enc.copy_(start.W_enc)
            sae.W_dec.copy_(start.W_dec)
            sae.b_dec.copy_(start.b_dec * (scale / float(start.norm_scale)))

    def step(self, x: torch.Tensor) -> None:
        tr = self.trainer
        tr.maybe_reset_sparsity()
        tr.step(x)
        tr.n_training_steps += 1

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        sae = self.trainer.sae
        # as fit() ends: fold the input scaling into the weights
        sae.fold_activation_norm_scaling_factor(self.trainer.activation_scaler.scaling_factor)
        self.trainer.activation_scaler.scaling_factor = None
        sae.eval()
        return sae(x)


class _DictionaryLearning:
    """dictionary_learning 0.1.0: ``TopKTrainer.update`` (AutoEncoderTopK, AuxK, unit-norm
    decoder, its LR schedule), inputs scaled as its ``trainSAE`` does."""

    name = "dictionary_learning"

    def __init__(self, start, init_rows: torch.Tensor, steps: int):
        from sae_job import BATCH, D_IN, K

        if "nnsight" not in sys.modules:
            try:
                import nnsight  # noqa: F401
            except ImportError:
                # the package __init__ imports nnsight for its LM activation buffer, which
                # training from a tensor never touches; nnsight's pinned deps would replace torch
                sys.modules["nnsight"] = types.SimpleNamespace(LanguageModel=None)
        from dictionary_learning.trainers.top_k import TopKTrainer

        self.trainer = TopKTrainer(
            steps=steps, activation_dim=D_IN, dict_size=start.d_sae, k=K, layer=0, lm_name="synthetic", lr=LR,
            warmup_steps=LR_WARMUP, decay_start=steps - int(steps * DECAY_FRACTION), device="cpu", seed=0)
        self.trainer.dead_feature_threshold = (DEAD_STEPS + 2) * BATCH  # rows, counted as bioviz does
        # trainSAE(normalize_activations=True): unit mean squared norm
        self.norm_factor = float(init_rows.pow(2).sum(1).mean().sqrt())
        ae = self.trainer.ae
        with torch.no_grad():  # the shared starting point, in its units (x / norm_factor)
            ae.encoder.weight.copy_(start.W_enc.t())
            ae.decoder.weight.copy_(start.W_dec.t())
            ae.b_dec.copy_(start.b_dec / (float(start.norm_scale) * self.norm_factor))
        self.i = 1  # update(step=0) would replace b_dec by the geometric median of the first batch

    def step(self, x: torch.Tensor) -> None:
        self.trainer.update(self.i, x / self.norm_factor)
        self.i += 1

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        ae = self.trainer.ae
        ae.scale_biases(self.norm_factor)  # as trainSAE does before saving
        return ae(x)


def _interleaved(tmp: Path) -> dict:
    import lightning as L
    from sae_job import (
        BATCH,
        D_IN,
        EXPANSION,
        ROWS_PER_ITEM,
        Items,
        K,
        Planted,
        train_kwargs,
        write_store,
    )

    import bioviz as bv
    from bioviz.sae import SAEConfig, build_sae
    from bioviz.sae.data import ActivationDataModule

    d_sae = D_IN * EXPANSION
    gen = Planted()
    n_items = math.ceil((STEPS + 1) * BATCH / ROWS_PER_ITEM)
    store = write_store(tmp / "train", Items(n_items, gen))
    heldout = torch.cat([gen.rows(10**6 + i, ROWS_PER_ITEM) for i in range(HELDOUT_ROWS // ROWS_PER_ITEM)])
    # the rows bioviz fits its input scale and b_dec on (ActivationDataModule.sample)
    init_rows = ActivationDataModule(str(store.path), batch_size=BATCH, seed=0).sample()

    # bioviz's starting point, built as SAEModule builds it (config seed 0, then
    # fit_normalisation and init_from_data on the same sample); checked below
    start = build_sae(SAEConfig(d_in=D_IN, d_sae=d_sae, k=K, seed=0))
    start.fit_normalisation(init_rows)
    start.init_from_data(init_rows)
    peers = [_SAELens(start, init_rows, STEPS)]
    if WITH_DICTIONARY_LEARNING:
        peers.append(_DictionaryLearning(start, init_rows, STEPS))
    B = torch.randn(D_IN, d_sae, generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {"bioviz": [], "mm": [], **{p.name: [] for p in peers}}

    class Interleave(L.Callback):
        def on_train_start(self, trainer, module):
            sae = module.saes[0]
            for name in ("W_enc", "W_dec", "b_enc", "b_dec", "norm_scale"):
                torch.testing.assert_close(getattr(sae, name), getattr(start, name), rtol=0, atol=0, msg=name)
            self.mark = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            now = time.perf_counter()
            times["bioviz"].append(now - self.mark)
            x = batch[0]
            for p in peers:
                t = time.perf_counter()
                p.step(x)
                times[p.name].append(time.perf_counter() - t)
            t = time.perf_counter()
            torch.mm(x, B)
            times["mm"].append(time.perf_counter() - t)
            self.mark = time.perf_counter()

    sae, = bv.train(str(store.path), output_dir=str(tmp / "bioviz"),
                    optim={"lr": LR, "warmup_steps": LR_WARMUP, "decay_fraction": DECAY_FRACTION,
                           "dead_window_rows": (DEAD_STEPS + 2) * BATCH},
                    trainer={"enable_progress_bar": False, "callbacks": [Interleave()]},
                    **train_kwargs(STEPS))
    assert all(len(v) == STEPS for v in times.values()), {k: len(v) for k, v in times.items()}
    with torch.no_grad():
        sae.eval()
        fvu = {"bioviz": _fvu(heldout, sae(heldout).x_hat)}
    for p in peers:
        fvu[p.name] = _fvu(heldout, p.reconstruct(heldout))

    timed = {k: v[WARMUP_STEPS:] for k, v in times.items()}
    rate = {k: BATCH * len(v) / sum(v) for k, v in timed.items()}
    fastest = {k: BATCH / min(v) for k, v in timed.items()}
    # sae_flops_fraction (see the module docstring: dense-equivalent, not a fraction of the
    # machine). Dense-equivalent FLOPs of one TopK training step, n rows, d = d_in, m = d_sae:
    # forward encoder 2nmd + decoder 2nmd, backward twice each (grad wrt input and wrt
    # weights) = 8nmd, total 12nmd. torch.mm of [n, d] x [d, m] is 2nmd. Both timed as the
    # fastest of the interleaved steps (the least disturbed by other jobs).
    n = BATCH
    step_flops = 12 * n * D_IN * d_sae
    mm_flops = 2 * n * D_IN * d_sae
    achieved = step_flops / min(timed["bioviz"])
    peak = mm_flops / min(timed["mm"])
    out = {
        "sae_vs_saelens_throughput": rate["bioviz"] / rate["saelens"],
        "sae_fvu": fvu["bioviz"],
        "saelens_fvu": fvu["saelens"],
        "sae_flops_fraction": achieved / peak,
        # examples/s over the limit: one dense encoder matmul per example at torch.mm's rate
        "sae_limit_fraction": rate["bioviz"] / rate["mm"],
        "sae_limit_fraction_fastest_step": fastest["bioviz"] / fastest["mm"],
        "sae_limit_examples_per_s": rate["mm"],
        "sae_examples_per_s": rate["bioviz"],
        "saelens_examples_per_s": rate["saelens"],
        "sae_vs_saelens_throughput_fastest_step": fastest["bioviz"] / fastest["saelens"],
        "sae_step_gflops": achieved / 1e9,
        "torch_mm_gflops": peak / 1e9,
        "sae_bench_steps": STEPS,
    }
    if WITH_DICTIONARY_LEARNING:
        out.update({
            "sae_vs_dictionary_learning_throughput": rate["bioviz"] / rate["dictionary_learning"],
            "dictionary_learning_fvu": fvu["dictionary_learning"],
            "dictionary_learning_examples_per_s": rate["dictionary_learning"],
        })
    return out


def _peak_rss(store: Path, out: Path) -> tuple[float, float]:
    """(peak RSS of the whole training process, of its training loop alone), MB."""
    res = subprocess.run([sys.executable, str(JOB), "rss", str(store), str(RSS_STEPS), str(RSS_BUFFER_ROWS), str(out)],
                         check=True, capture_output=True, text=True)
    loop, whole = (float(v) for v in res.stdout.strip().splitlines()[-2:])
    return whole, loop


def _rss(tmp: Path) -> dict:
    from sae_job import ROWS_PER_ITEM, Items, Planted, write_store

    gen = Planted(seed=1)
    # 8x store: the base rows repeated 8 times (the content does not matter here, the size does)
    base = torch.cat([gen.rows(i, ROWS_PER_ITEM) for i in range(RSS_BASE_ITEMS)])
    small = write_store(tmp / "rss1", Items(RSS_BASE_ITEMS, base=base), dtype="float16")
    big = write_store(tmp / "rss8", Items(8 * RSS_BASE_ITEMS, base=base), dtype="float16")
    del base
    mb = [small.n_rows * small.dim() * 2 / 2**20, big.n_rows * big.dim() * 2 / 2**20]
    rss1, loop1 = _peak_rss(small.path, tmp / "rss1_sae")
    rss8, loop8 = _peak_rss(big.path, tmp / "rss8_sae")
    return {"sae_peak_rss_ratio_8x": rss8 / rss1, "sae_peak_rss_base_mb": rss1, "sae_peak_rss_8x_mb": rss8,
            # the loop alone (its peak is below the init's, which would hide a leak in it)
            "sae_loop_peak_rss_ratio_8x": loop8 / loop1, "sae_loop_peak_rss_base_mb": loop1,
            "sae_rss_store_mb": mb[0], "sae_rss_store_8x_mb": mb[1]}


def run() -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        out = _interleaved(tmp)
        out.update(_rss(tmp))
    return out
