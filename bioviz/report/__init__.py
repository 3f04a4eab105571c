"""The report stage (being built): what a lab hands to clinicians, de-identified."""

from .checks import references
from .data import write_data
from .deidentify import Pseudonyms, deidentify, find_identifiers

__all__ = ["Pseudonyms", "deidentify", "find_identifiers", "references", "write_data"]
