"""The report stage (being built): what a lab hands to clinicians, de-identified."""

from .data import write_data
from .deidentify import Pseudonyms, deidentify, find_identifiers

__all__ = ["Pseudonyms", "deidentify", "find_identifiers", "write_data"]
