"""bm3d (a bench-only dependency, bench/classical_denoisers.py): its own mapping of a BM3D
profile to the BM4D profile its engine runs, so a stack of small images can take one
first-stage call. Nothing of the product imports bm3d."""

from __future__ import annotations

from dae.compat.checks import _attr, _module


def bm3d_volume_profile(profile):
    """bm3d._convert_profile(profile): the BM4DProfile bm3d.bm3d itself would run with (no
    public function gives it). Checked: the function exists and takes one profile."""
    lib, patch = "bm3d", "bm3d_volume_profile"
    convert = _attr(lib, patch, _module(lib, patch, "bm3d"), "_convert_profile", ("pro_in",))
    return convert(profile)
