"""What each stage does: its verb called with its section of the config, on paths under the
study folder; the adapter and the data are built once, when a stage first needs them."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..cli import ConfigError, _instantiate, import_policy
from ..errors import InputError
from .layout import RECORD

TRAIN_NOTE = ("training did not finish before (killed or failed): it started again from step 0, since a run "
              "resumed from a checkpoint is not bit-identical with an uninterrupted one")


class _Stages:
    """``run_<stage>(resume)`` for every stage, each returning what the record keeps of it.

    A part of :class:`~bioviz.run.runner._Runner`, which holds what these use: ``study``,
    ``record``, ``forced``, ``progress``, ``path(stage)`` and the ``_adapter`` / ``_data`` caches.
    """

    @property
    def adapter(self):
        if self._adapter is None:
            torch.manual_seed(self.study.seed)  # models built from a config get reproducible weights
            try:
                with import_policy(self.study.trust):
                    self._adapter = _instantiate(self.study.adapter.build)
            except ConfigError as e:
                raise ConfigError(f"adapter ({self.study.config['adapter']['class_path']}): {e}") from None
        return self._adapter

    @property
    def data(self):
        if self._data is None:
            self._data = self.study.build_data()
        return self._data

    @property
    def sae_path(self) -> Path:
        names = self.record.stage("train").get("saes") or []
        if not names:
            raise InputError(f"{self.path('train')}: no trained SAE recorded in {RECORD}; run with --from train")
        return self.path("train") / names[0]  # a sweep: the first SAE is encoded

    def run_cohort(self, resume: bool) -> dict:
        folder = self.path("cohort")
        shutil.rmtree(folder, ignore_errors=True)  # a builder writes into an empty folder
        folder.mkdir(parents=True)
        with import_policy(self.study.trust):
            builder = _instantiate(self.study.cohort.build)
        with tqdm(total=1, desc="cohort", unit="cohort", disable=not self.progress) as bar:
            builder.build(folder)
            bar.update()
        return {}

    def run_extract(self, resume: bool) -> dict:
        from ..extract import extract

        entry = self.record.stage("extract")
        # the store resumes itself (same configuration); another configuration replaces it
        overwrite = "extract" in self.forced or not resume and bool(entry)
        extract(self.adapter, self.data, self.study.config["layer"], str(self.path("extract")),
                overwrite=overwrite, progress=self.progress, **self.study.section("extract"))
        return {"resumed": resume and not overwrite}

    def run_train(self, resume: bool) -> dict:
        from ..sae.train import _folder_name, train

        shutil.rmtree(self.path("train"), ignore_errors=True)  # from step 0, always
        kw = self.study.section("train")
        trainer = {"enable_progress_bar": self.progress, **(kw.pop("trainer") or {})}
        with import_policy(self.study.trust):  # a logger or callbacks the config gives as class_path/init_args
            for k, built in self.study.trainer_objects.items():
                trainer[k] = _instantiate(lambda b=built: [x.build() for x in b] if isinstance(b, list) else b.build())
        saes = train(str(self.path("extract")), self.study.config["layer"], sae=self.study.section("sae"),
                     output_dir=str(self.path("train")), seed=self.study.seed, trainer=trainer, **kw)
        # the folders bioviz.train wrote, in its order (a sweep's first SAE is the one encoded)
        names = [_folder_name(s.architecture, over) for s, over in zip(saes, kw.get("sweep") or [{}])]
        return {"saes": names, **({"restarted_from_scratch": True, "note": TRAIN_NOTE} if resume else {})}

    def run_encode(self, resume: bool) -> dict:
        from ..features import encode

        encode(str(self.sae_path), str(self.path("extract")), self.study.config["layer"],
               out=str(self.path("encode")), overwrite=True, progress=self.progress,
               **self.study.section("encode"))
        return {}

    def run_associate(self, resume: bool) -> dict:
        from ..analysis.associate import associate

        associate(str(self.path("encode")), out=str(self.path("associate")), overwrite=True,
                  seed=self.study.seed, progress=self.progress, **self.study.section("associate"))
        return {}

    def run_interpret(self, resume: bool) -> dict:
        from ..interpret import interpret

        kw = self.study.section("interpret")
        if kw.pop("model", False):
            kw.update(adapter=self.adapter, data=self.data, sae=str(self.sae_path), layer=self.study.config["layer"])
        interpret(str(self.path("associate")), str(self.path("encode")), out=str(self.path("interpret")),
                  overwrite=True, seed=self.study.seed, progress=self.progress, **kw)
        return {}

    def run_report(self, resume: bool) -> dict:
        from ..report import report

        report(str(self.path("associate")), str(self.path("report")), interpretation=str(self.path("interpret")),
               features=str(self.path("encode")), overwrite=True, progress=self.progress,
               **self.study.section("report"))
        return {}
