"""The package version, in a module of its own so stages can record it without importing
the package ``__init__`` (which imports the stages)."""

__version__ = "0.1.0"
