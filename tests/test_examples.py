"""The Examples sections of the public verbs run, and print what their docstrings say."""

import doctest
import importlib

import pytest

MODULES = ["bioviz.hooks", "bioviz.batches", "bioviz.extract", "bioviz.features",
           "bioviz.evaluate", "bioviz.sae.train", "bioviz.analysis.associate",
           "bioviz.analysis.aggregate", "bioviz.interpret.attribution", "bioviz.interpret.intervene"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # anything an example writes by default lands here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             report=True)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
