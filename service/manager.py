"""The set of served models: loading, warming, hot-swapping, unloading, and the repository index.

A load opens the newest version(s) of a model in a worker thread, warms them up, and only then swaps them
in; a failed load leaves what was serving in place and records the reason for ``/v2/repository/index``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field

from service.batching import Batcher
from service.errors import ApiError, not_found, unavailable
from service.metrics import Metrics
from service.model import ModelLoadError, ModelVersion, load_version
from service.providers import cuda_options
from service.repository import model_names, versions
from service.settings import Settings

logger = logging.getLogger(__name__)
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass
class Served:
    """A model version with its batcher."""

    model: ModelVersion
    batcher: Batcher


@dataclass
class IndexEntry:
    name: str
    state: str  # READY | UNAVAILABLE
    reason: str = ""
    versions: list[int] = field(default_factory=list)


class ModelManager:
    """Holds every served model version; all mutations happen on the event loop."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, dict[int, Served]] = {}
        self.index: dict[str, IndexEntry] = {}
        self.ready = False
        self.draining = False
        self._lock = asyncio.Lock()

    # ---- lookup ------------------------------------------------------------------------------------------
    def get(self, name: str, version: str | None = None) -> Served:
        """The newest (or the given) ready version of ``name``; 404 names what exists.

        While draining (after SIGTERM) requests are still served: readiness is off so that load balancers stop
        sending, but whatever reaches the server is answered.
        """
        by_version = self.models.get(name)
        if not by_version:
            entry = self.index.get(name)
            if entry is not None and entry.state != "READY":
                raise unavailable(f"model {name!r} is not ready: {entry.reason or entry.state}")
            known = ", ".join(sorted(self.models)) or "none"
            raise not_found(f"unknown model {name!r}; loaded models: {known}")
        if version is None or version == "":
            return by_version[max(by_version)]
        if not version.isdigit() or int(version) not in by_version:
            loaded = ", ".join(str(v) for v in sorted(by_version))
            raise not_found(f"model {name!r} has no loaded version {version!r}; loaded versions: {loaded}")
        return by_version[int(version)]

    # ---- loading ----------------------------------------------------------------------------------------
    def _load_sync(self, name: str) -> list[ModelVersion]:
        s = self.settings
        model_dir = s.repository / name
        found = versions(model_dir)
        if not found:
            raise ModelLoadError(f"{model_dir} has no version folder with a model.onnx")
        delay = None if s.max_queue_delay_ms is None else round(s.max_queue_delay_ms * 1000)
        return [
            load_version(
                model_dir,
                v,
                s.providers,
                s.intra_op_threads,
                s.max_batch_size,
                delay,
                cuda=cuda_options(s),
                batch_buckets=s.batch_buckets,
            )
            for v in found[-s.model_versions :]
        ]

    async def load(self, name: str) -> IndexEntry:
        """Load (or reload) ``name``: new versions are warmed before they replace the old ones."""
        if not MODEL_NAME.match(name):
            raise ApiError(400, f"invalid model name {name!r}")
        async with self._lock:
            try:
                loaded = await asyncio.to_thread(self._load_sync, name)
            except ModelLoadError as exc:
                logger.error("cannot load model %s: %s", name, exc)
                old = self.models.get(name)
                entry = IndexEntry(
                    name, "READY" if old else "UNAVAILABLE", f"last load failed: {exc}", sorted(old) if old else []
                )
                self.index[name] = entry
                return entry
            new = {
                m.version: Served(
                    m, Batcher(m, self.settings.max_queue_size, self.metrics.version(name, str(m.version)))
                )
                for m in loaded
            }
            for served in new.values():
                served.batcher.start()
                self.metrics.model_info.labels(*served.model.info_labels()).set(1)
            old = self.models.get(name, {})
            self.models[name] = new
            self.index[name] = IndexEntry(name, "READY", "", sorted(new))
        for served in old.values():
            await served.batcher.stop()
        return self.index[name]

    async def unload(self, name: str) -> None:
        async with self._lock:
            old = self.models.pop(name, None)
            if old is None and name not in self.index:
                raise not_found(f"unknown model {name!r}")
            self.index[name] = IndexEntry(name, "UNAVAILABLE", "unloaded", [])
        for served in (old or {}).values():
            await served.batcher.stop()

    async def load_all(self) -> None:
        """Load every model of the repository; refuse to start with none when ``require_model``."""
        repo = self.settings.repository
        names = model_names(repo)
        if not names and self.settings.require_model:
            where = "does not exist" if not repo.exists() else "holds no model (<name>/<version>/model.onnx)"
            raise RuntimeError(f"model repository {repo} {where}; run bnfold-export first")
        for name in names:
            await self.load(name)
        if self.settings.require_model and not self.models:
            reasons = "; ".join(f"{e.name}: {e.reason}" for e in self.index.values())
            raise RuntimeError(f"no model in {repo} could be loaded ({reasons})")
        self.ready = True

    def scan_index(self) -> list[IndexEntry]:
        """Index of the repository: every model folder, loaded or not."""
        entries = dict(self.index)
        for name in model_names(self.settings.repository):
            entries.setdefault(name, IndexEntry(name, "UNAVAILABLE", "not loaded", []))
        return [entries[n] for n in sorted(entries)]

    async def stop(self) -> None:
        """Finish queued requests of every model, then stop the batchers."""
        self.ready = False
        for by_version in list(self.models.values()):
            for served in by_version.values():
                await served.batcher.stop()


__all__ = ["IndexEntry", "ModelManager", "Served"]
