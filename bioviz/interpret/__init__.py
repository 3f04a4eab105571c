"""Interpretation: what each candidate feature is, and whether the model relies on it."""

from .evidence import Interpretation, interpret

__all__ = ["interpret", "Interpretation"]
