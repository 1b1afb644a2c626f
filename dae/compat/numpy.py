"""NumPy: the function its pickles of arrays name."""

from __future__ import annotations

from dae.compat.checks import _attr, _module


def numpy_array_reconstructor():
    """What a pickled ndarray is rebuilt with: numpy.core.multiarray._reconstruct, which
    NumPy 2 moved to its private numpy._core (numpy.core is a deprecated alias). For an
    unpickler that admits arrays and nothing else, instead of importing whatever a
    third-party pickle names. Checked: the module and the function still exist."""
    lib, patch = "numpy", "numpy_array_reconstructor"
    multiarray = _module(lib, patch, "numpy._core.multiarray")
    return _attr(lib, patch, multiarray, "_reconstruct")
