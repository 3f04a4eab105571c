"""Interpretation: what each candidate feature is, and whether the model relies on it."""
