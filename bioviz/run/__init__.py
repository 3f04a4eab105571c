"""``bioviz run CONFIG``: a whole study from one YAML file, stage by stage, cached and resumable.

Stages, in order: ``cohort`` (when the config has one) → ``extract`` → ``train`` → ``encode`` →
``associate`` → ``interpret`` → ``report``. Each calls its verb (:func:`bioviz.extract`, ...)
with its section of the config and writes its artifact under the study folder::

    cohort/  store/  sae/  features.h5ad  findings/  interpretation/  report/  run.json

``run.json`` records, per stage, a hash of its configuration, a hash of its inputs' checksums
(the cohort's files, the store's manifest, the SAE's files, the FeatureTable, the Findings'
manifest, ``interpretation.json``, and any file the section names) and the checksum of what it
wrote. A re-run skips a stage whose configuration, inputs and artifact are unchanged
("cached"); a stage a killed run left running is resumed: extraction continues its store from
the last committed chunk, training starts again from step 0 (a run resumed from a Lightning
checkpoint is close to, not bit-identical with, an uninterrupted one, and a study must give the
same candidates however often it was interrupted), and the later stages write their artifacts
atomically, so they simply run again. ``from_stage`` forces a stage and every later one.

Every relative path in the config is relative to the study folder (the process works inside
it while the study runs); ``study`` itself is relative to the working directory. The study
folder is locked (:class:`~bioviz.lock.ArtifactLock`) while a run works in it.

The package: ``layout`` (the stages, where each writes), ``schema`` (the config's keys and sections),
``config`` (read, check, resolve: :class:`Study`), ``record`` (``run.json``), ``stages`` (what each
stage does), ``runner`` (the cached loop), ``study`` (:func:`run_study`: lock, leftovers, the loop),
``summary`` and ``cli`` (``bioviz run``'s arguments).
"""

from ..cli import ConfigError
from .cli import RUN_HELP, main
from .config import Study, load_config, print_config
from .layout import ARTIFACTS, RECORD, STAGES
from .record import KIND
from .study import run_study
from .summary import format_summary, summary

__all__ = ["run_study", "load_config", "print_config", "summary", "Study", "ConfigError", "STAGES", "main",
           # what the CLI and experiments/kill_resume.py read
           "format_summary", "RUN_HELP", "ARTIFACTS", "RECORD", "KIND"]
