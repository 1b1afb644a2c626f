"""The ServableManager's shared state, read by requests while its poll thread writes it."""

from dae.serving.model_server.manager import ServableManager
from dae.serving.model_server.model_config import single_model


def test_available_survives_a_push_polled_in_the_middle_of_it(tmp_path):
    """status, metrics and a config reload read `available()` while the poll thread may
    record a new version's state. The poll is made to run at the worst instant, in the middle
    of the read, deterministically: reading version 1's state lands a push (version 2, which
    fails to load) and polls it. The read must answer from what it started with, not fail
    with "dictionary changed size during iteration"."""
    base = tmp_path / "denoiser"
    (base / "1").mkdir(parents=True)
    manager = ServableManager(single_model("denoiser", base), warmup=0)
    polled = []

    class PushLandsWhileRead:
        error = ""

        @property
        def state(self):
            if not polled:  # the poll thread gets the GIL here, once
                (base / "2").mkdir()
                manager.poll()
                polled.append(dict(manager.states))
            return "AVAILABLE"

    manager.states = {1: PushLandsWhileRead()}
    assert manager.available() == [1]
    assert polled[0][2].state == "END" and "failed to load" in polled[0][2].error
    assert manager.available() == [1]  # and the next read sees what the poll recorded
    assert sorted(manager.states) == [1, 2]
