"""``run.json``, the run's record (per stage: status, hashes of its configuration and inputs, the
checksum of what it wrote, timings), and the checksums of the files a config section names."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..checksum import file_checksum

log = logging.getLogger(__name__)

KIND = "bioviz.run"


class _Record:
    """``run.json``: per stage its status, hashes and timings; written atomically."""

    def __init__(self, path: Path):
        self.path = path
        self.data = {"kind": KIND, "stages": {}}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                if data.get("kind") == KIND and isinstance(data.get("stages"), dict):
                    self.data = data
            except (OSError, ValueError):
                log.warning("%s is unreadable: every stage is checked again", path)

    def stage(self, name: str) -> dict:
        return self.data["stages"].get(name) or {}

    def start(self, name: str, **values) -> None:
        """A new entry for a stage that starts now (what an earlier run said of it goes)."""
        self.data["stages"][name] = {"status": "running", **values}
        self.save()

    def update(self, name: str, **values) -> None:
        self.data["stages"][name] = {**self.stage(name), **values}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def _named_files(value, seen: dict | None = None) -> dict:
    """Checksums of the files and folders a config section names (relative to the working
    directory, the study folder): a changed clinical table re-runs its stage."""
    seen = {} if seen is None else seen
    if isinstance(value, dict):
        for v in value.values():
            _named_files(v, seen)
    elif isinstance(value, list):
        for v in value:
            _named_files(v, seen)
    elif isinstance(value, str) and value not in ("", ".", "..") and "\n" not in value and len(value) < 4096:
        try:
            exists = Path(value).exists()
        except OSError:
            exists = False
        if exists and value not in seen:
            seen[value] = file_checksum(value)
    return seen
