"""The Jinja2 environment every page is rendered with: autoescaping always on (also for a
lab's own templates, whatever their file names end in), and a lab's template folder searched
before the shipped one, so a lab can replace one template (its logo, its wording) and keep
the rest."""

from __future__ import annotations

from pathlib import Path

import jinja2

from ..errors import InputError

__all__ = ["environment"]


def environment(templates=None) -> jinja2.Environment:
    """The environment: ``templates`` (a folder) overrides the shipped templates by name."""
    loaders: list[jinja2.BaseLoader] = []
    if templates is not None:
        folder = Path(templates)
        if not folder.is_dir():
            raise InputError(f"templates={folder}: not a folder (give the folder holding your "
                             "report.html.j2 / atlas.html.j2 overrides)")
        loaders.append(jinja2.FileSystemLoader(str(folder)))
    loaders.append(jinja2.PackageLoader("bioviz.report", "templates"))
    # autoescape=True, not select_autoescape: a lab's template named *.j2 or *.txt is escaped too
    env = jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env
