"""The report stage: what a lab hands to clinicians (HTML, PDF, data/), de-identified, and
the feature atlas for the lab."""

from .build import ReportFolder, report
from .checks import references
from .content import RUO, Report
from .data import write_data
from .deidentify import Pseudonyms, deidentify, find_identifiers, scrub

__all__ = ["report", "ReportFolder", "Report", "RUO", "Pseudonyms", "deidentify", "scrub", "find_identifiers",
           "references", "write_data"]
