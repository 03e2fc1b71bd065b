"""Fixtures shared by Testing/Lib and Testing/Module."""
import locale

import pytest


@pytest.fixture(autouse=True)
def _restore_process_locale():
    """slicer-core's storage nodes (like Slicer itself) switch the process to the "C" locale.
    Restore it after each test, so later tests in the same worker see the environment's
    locale (torch.compile, for one, reads its templates with the locale's encoding)."""
    saved = locale.setlocale(locale.LC_ALL, None)
    yield
    if locale.setlocale(locale.LC_ALL, None) != saved:
        locale.setlocale(locale.LC_ALL, saved)
