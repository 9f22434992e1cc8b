"""The set of served models: loading, warming, hot-swapping, unloading, and the repository index.

A load opens the newest version(s) of a model in a worker thread, warms them up, and only then swaps them
in; a failed load leaves what was serving in place and records the reason for ``/v2/repository/index``.
A model that serves nothing yet (at start, or after an unload) falls back to its newest versions that do
load when newer ones fail; the index, the metadata and the log say which version serves and why. A failed
load of a name with no folder in the repository leaves no trace.
Versions in requests are canonical decimal integers (``1``, not ``01`` or other scripts' digits).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field

from service.batching import Batcher
from service.errors import ApiError, bad_request, not_found, unavailable
from service.metrics import Metrics
from service.model import ModelLoadError, ModelVersion, load_version
from service.providers import cuda_options
from service.repository import VERSION, model_names, versions
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
    failed: bool = False  # the last load failed (``reason`` says why)


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
                raise unavailable(f"model {name!r} is not ready: {entry.reason or entry.state}", 1)
            known = ", ".join(sorted(self.models)) or "none"
            raise not_found(f"unknown model {name!r}; loaded models: {known}")
        if version is None or version == "":
            return by_version[max(by_version)]
        if not VERSION.fullmatch(version):
            raise bad_request(f"model {name!r}: version must be a decimal integer like 1 or 12, got {version!r}")
        if int(version) not in by_version:
            loaded = ", ".join(str(v) for v in sorted(by_version))
            raise not_found(f"model {name!r} has no loaded version {version!r}; loaded versions: {loaded}")
        return by_version[int(version)]

    # ---- loading ----------------------------------------------------------------------------------------
    def _load_sync(self, name: str, fallback: bool) -> tuple[list[ModelVersion], str]:
        """The newest ``model_versions`` versions of ``name``, and a note naming any version skipped.

        Without ``fallback`` any failure among them fails the load; with it, a failing version is skipped for
        the next older one.
        """
        s = self.settings
        model_dir = s.repository / name
        found = versions(model_dir)
        if not found:
            raise ModelLoadError(f"{model_dir} has no version folder with a model.onnx")
        delay = None if s.max_queue_delay_ms is None else round(s.max_queue_delay_ms * 1000)
        loaded: list[ModelVersion] = []
        skipped: list[str] = []
        for v in reversed(found if fallback else found[-s.model_versions :]):
            try:
                loaded.append(
                    load_version(
                        model_dir,
                        v,
                        s.providers,
                        s.intra_op_threads,
                        s.max_batch_size,
                        delay,
                        cuda=cuda_options(s),
                        batch_buckets=s.batch_buckets,
                        spinning=s.intra_op_spinning,
                    )
                )
            except ModelLoadError as exc:
                if not fallback:
                    raise
                skipped.append(f"version {v} failed ({exc})")
            if len(loaded) == s.model_versions:
                break
        if not loaded:
            raise ModelLoadError("; ".join(skipped))
        note = ""
        if skipped:
            serving = ", ".join(str(m.version) for m in loaded)
            note = f"serving version {serving} because newer {'; '.join(skipped)}"
            logger.warning("model %s: %s", name, note)
        return loaded, note

    async def load(self, name: str) -> IndexEntry:
        """Load (or reload) ``name``: new versions are warmed before they replace the old ones."""
        if not MODEL_NAME.match(name):
            raise ApiError(400, f"invalid model name {name!r}")
        async with self._lock:
            old = self.models.get(name, {})
            if not old and not (self.settings.repository / name).is_dir():
                raise not_found(f"no model {name!r} in the repository {self.settings.repository}")
            try:
                loaded, note = await asyncio.to_thread(self._load_sync, name, not old)
            except ModelLoadError as exc:
                logger.error("cannot load model %s: %s", name, exc)
                state = "READY" if old else "UNAVAILABLE"
                entry = IndexEntry(name, state, f"last load failed: {exc}", sorted(old), failed=True)
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
            self.models[name] = new
            self.index[name] = IndexEntry(name, "READY", note, sorted(new))
        for served in old.values():  # requests they admitted are answered; later ones go to the new versions
            await served.batcher.stop(self.settings.request_timeout_s)
        return self.index[name]

    async def unload(self, name: str) -> None:
        async with self._lock:
            old = self.models.pop(name, None)
            if old is None and name not in self.index:
                raise not_found(f"unknown model {name!r}")
            self.index[name] = IndexEntry(name, "UNAVAILABLE", "unloaded", [])
        for served in (old or {}).values():
            await served.batcher.stop(self.settings.request_timeout_s)

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
        """Answer the requests every model admitted, then stop the batchers."""
        self.ready = False
        batchers = [served.batcher for by_version in self.models.values() for served in by_version.values()]
        await asyncio.gather(*(b.stop(self.settings.graceful_timeout_s) for b in batchers))

    def abort(self) -> None:
        """Stop every batcher at once, failing what is queued (a second signal)."""
        self.ready = False
        for by_version in self.models.values():
            for served in by_version.values():
                served.batcher.abort()


__all__ = ["IndexEntry", "ModelManager", "Served"]
