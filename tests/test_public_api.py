"""The public API: everything README uses is importable from the package root, lazily."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cdc_notebook


def test_the_seeds_import_works_from_the_root():
    from cdc_notebook import ArrowCDCReaderConfig

    assert callable(ArrowCDCReaderConfig.auto_configure)


def test_every_name_in___all___resolves_and_the_package_is_typed():
    for name in cdc_notebook.__all__:
        assert getattr(cdc_notebook, name) is not None, name
    assert cdc_notebook.__version__.count(".") == 2
    assert (Path(cdc_notebook.__file__).parent / "py.typed").is_file()


def test_importing_the_package_loads_no_heavy_dependency():
    code = ("import sys, cdc_notebook; "
            "print(','.join(m for m in ('polars', 'ipywidgets', 'matplotlib', 'pyarrow') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""


def test_an_unknown_name_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="no_such_thing"):
        name = "no_such_thing"  # a name that is not exported
        getattr(cdc_notebook, name)
