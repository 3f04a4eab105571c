"""The architecture registry: ``SAEConfig.architecture`` name -> SAE class.

A module of its own (it imports nothing from :mod:`bioviz.sae`) so that the config, the
base class and the checkpoint reader can all look architectures up without importing one
another. The registry is filled when the architecture modules are imported, which
``import bioviz.sae`` does.
"""

from __future__ import annotations

#: name -> class; filled by ``@register`` when the architecture modules are imported.
ARCHITECTURES: dict[str, type] = {}


def register(name: str):
    """Class decorator: make an architecture buildable from ``SAEConfig(architecture=name)``.

    Parameters
    ----------
    name
        The value of ``SAEConfig.architecture`` that selects the class.

    Returns
    -------
    callable
        The decorator; it sets ``cls.architecture = name`` and records the class in
        ``ARCHITECTURES``.
    """

    def deco(cls):
        cls.architecture = name
        ARCHITECTURES[name] = cls
        return cls

    return deco
