"""`dae denoise`: denoise a batch of images with a SavedModel (Beam RunInference) or a
TF Serving endpoint. (Being written.)"""

from __future__ import annotations


class BatchError(Exception):
    """Bad input or output for a batch job; one line for the user."""


def add_arguments(p) -> None:
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)


def main(args) -> int:
    raise BatchError("dae denoise is not written yet")
