"""A warning that points at gridgen's own code, a test or a test helper fails the test
(pyproject.toml's filterwarnings), so deprecations of ours cannot pile up unseen."""

from __future__ import annotations

import warnings

import pytest


@pytest.mark.parametrize("module", ["gridgen.runner", "gridgen.server.app", "test_something", "helpers.server"])
def test_a_warning_from_our_modules_is_an_error(module: str) -> None:
    with pytest.raises(DeprecationWarning, match="deprecated here"):
        warnings.warn_explicit("deprecated here", DeprecationWarning, "x.py", 1, module=module)


def test_a_third_party_warning_stays_a_warning() -> None:
    with pytest.warns(DeprecationWarning):
        warnings.warn_explicit("theirs", DeprecationWarning, "x.py", 1, module="somelib.sub")
