"""Every patch of (and reach into) a library's private internals, in one place.

Each function says which upstream behaviour it works around, first checks that what it
patches or uses still exists (a module, an attribute, a method defined on that very class,
a signature where the patch depends on it) and otherwise raises CompatError naming the
library and its installed version: an upgrade breaks here, loudly, instead of running
silently unpatched. A patch may be applied any number of times; what it installs carries
the MARK attribute. Libraries are imported inside the functions: importing dae.compat
imports only the standard library, and nothing of dae's layers above it. One module a
library (checks.py holds the checks); every patch is also a name of this package, but
uvicorn's protocol (dae.compat.http), which only the model server imports.
Nothing else in dae imports a library's private modules: pyproject's import contract
"private modules of libraries only in dae.compat" (tests/import_contracts.py) says so.

Gone from here: model_server.server used to disable uvicorn's `Server.install_signal_handlers`.
uvicorn replaced that hook by `Server.capture_signals` (Kludex/uvicorn#1600), so on 0.54
the assignment did nothing and was removed; asyncio's own handlers still see the signals.
"""

from dae.compat.beam import beam_fn_api_runner
from dae.compat.bm3d import bm3d_volume_profile
from dae.compat.checks import (
    DISTRIBUTIONS,
    MARK,
    CompatError,
    patched,
    version,
)
from dae.compat.keras import keras_multi_worker_fit
from dae.compat.keras_tuner import (
    atomic_tuner_state,
    chief_waits_for_workers,
    hyperband_trials,
    record_oracle_client_trials,
)
from dae.compat.numpy import numpy_array_reconstructor
from dae.compat.tensorflow import (
    tf_forget_gradients,
    tf_gradient_registry,
    tf_gradients_registered,
    tf_session_run_unchecked,
)

__all__ = [
    "DISTRIBUTIONS",
    "MARK",
    "CompatError",
    "atomic_tuner_state",
    "beam_fn_api_runner",
    "bm3d_volume_profile",
    "chief_waits_for_workers",
    "hyperband_trials",
    "keras_multi_worker_fit",
    "numpy_array_reconstructor",
    "patched",
    "record_oracle_client_trials",
    "tf_forget_gradients",
    "tf_gradient_registry",
    "tf_gradients_registered",
    "tf_session_run_unchecked",
    "version",
]
