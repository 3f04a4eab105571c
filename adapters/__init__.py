"""Adapters: one module per modality family, imported as bioviz.adapters."""
