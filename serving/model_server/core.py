"""The models in service, as TF Serving's ServerCore holds them: one ServableManager per
configured model, a config that can be reloaded while serving (models added, reconfigured
or removed; version labels assigned only to versions that serve), and the config file
polled for changes (`--model_config_file_poll_wait_seconds`)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from dae.serving.model_server.manager import ServableManager
from dae.serving.model_server.model_config import (
    ModelConfig,
    ServerConfigError,
    read_model_server_config,
)
from dae.serving.model_server.servable import ServingError, clip

log = logging.getLogger("dae.serving")


class ServerCore:
    def __init__(self, poll_seconds: float = 1.0, warmup: int = 1):
        self.poll_seconds = poll_seconds  # --file_system_poll_wait_seconds
        self.warmup = warmup  # --num_request_iterations_for_warmup; 0: --enable_model_warmup=false
        self.managers: dict[str, ServableManager] = {}
        self.retired: dict[str, ServableManager] = {}  # left the config: their END states
        self.after_swap = lambda: None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._config_text: str | None = None

    def manager(self, name: str) -> ServableManager:
        manager = self.managers.get(name)  # one read: a reload swaps the whole dict
        if manager is None:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({clip(name)})")
        return manager

    def known(self, name: str) -> ServableManager | None:
        """A configured model's manager, or one that left the config (TF Serving keeps
        reporting its versions, END)."""
        return self.managers.get(name) or self.retired.get(name)

    def apply(self, configs: list[ModelConfig]) -> None:
        """ServerCore::ReloadConfig: new models start (their versions load now), models with
        the same base path take the new policy, others are replaced, removed ones unload;
        then the labels, each of which must name an available version (else ServerConfigError,
        and the models keep their old labels)."""
        with self._lock:
            old, new = self.managers, {}
            for config in configs:
                manager = old.get(config.name)
                if manager is not None and manager.base == Path(config.base_path):
                    manager.reconfigure(config)
                    manager.poll()
                else:
                    manager = ServableManager(config, self.warmup)
                    manager.after_swap = lambda: self.after_swap()
                    manager.start(self.poll_seconds)
                new[config.name] = manager
            self.managers = new  # the swap
            for name, manager in old.items():
                if new.get(name) is not manager:
                    log.info("model %s left the config: unloading it", name)
                    manager.stop(unload=True)
                    if name not in new:
                        self.retired[name] = manager
            for name in new:
                self.retired.pop(name, None)
            errors = []
            for config in configs:
                manager = new[config.name]
                available = set(manager.available())
                bad = [(k, v) for k, v in config.labels.items() if v not in available]
                if bad:
                    label, version = bad[0]
                    errors.append(
                        f"Request to assign label to version {version} of model {config.name}, "
                        "which is not currently available for inference"
                    )
                    continue
                manager.labels = dict(config.labels)
            if errors:
                raise ServerConfigError(errors[0])

    def watch(self, path: str | Path, seconds: float) -> None:
        """Re-read the config file every `seconds` and apply it when its text changed; a bad
        file is logged and the running config kept (Server::PollFilesystemAndReloadConfig)."""
        self._config_text = Path(path).read_text()
        if seconds > 0:
            self._thread = threading.Thread(
                target=self._watch, args=(Path(path), seconds), name="config", daemon=True
            )
            self._thread.start()

    def _watch(self, path: Path, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                text = path.read_text()
                if text == self._config_text:
                    continue
                self._config_text = text
                self.apply(read_model_server_config(path))
                log.info("reloaded the model config from %s", path)
            except (OSError, ServerConfigError) as e:
                log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", e)
            except Exception:
                log.exception("reloading %s failed", path)

    def states(self) -> dict[str, list[int]]:
        return {name: m.available() for name, m in self.managers.items()}

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        for manager in self.managers.values():
            manager.stop()
