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
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.batching import Batcher
from service.errors import ApiError, bad_request, not_found, unavailable
from service.metrics import Metrics
from service.model import ModelLoadError, ModelVersion, load_version
from service.providers import cuda_options
from service.repository import NAME_RE, VERSION, model_names, versions
from service.settings import Settings

logger = logging.getLogger(__name__)


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
        self.cluster: Any = None  # a service.workers.cluster.Cluster when this is one worker of several
        self.sole_client: Callable[[], bool] | None = None  # set by service.server, see may_run_inline
        self.grpc_calls = 0  # gRPC inferences running (grpc_call)
        self._lock = asyncio.Lock()

    def may_run_inline(self) -> bool:
        """Whether a lone request's batch may run on the event loop (:mod:`service.batching`), on the
        lone-request session if there is one: the server says it holds one client, an HTTP connection or a
        gRPC inference, with several workers across all of them (``sole_client``)."""
        sole = self.sole_client
        return sole is not None and sole()

    @contextlib.contextmanager
    def grpc_call(self) -> Iterator[None]:
        """Count a gRPC inference while it runs (a gRPC channel's connection tells nothing of its load: it is
        one for any number of concurrent calls), published to the other workers with several."""
        self._count_grpc(1)
        try:
            yield
        finally:
            self._count_grpc(-1)

    def _count_grpc(self, change: int) -> None:
        self.grpc_calls += change
        if self.cluster is not None:
            self.cluster.publish_grpc_calls(self.grpc_calls)

    def _lone_threads(self) -> int | None:
        """Intra-op threads of a lone-request session (:func:`service.model.lone_session_options`): all the
        workers' threads together (0, ONNX Runtime's default, with one worker and no thread setting); None
        when ``lone_request_session`` is off."""
        if not self.settings.lone_request_session:
            return None
        return self.settings.intra_op_threads * (1 if self.cluster is None else self.cluster.size)

    def is_ready(self) -> bool:
        """Models loaded and warm, not draining, and (with several workers) every worker so."""
        ok = self.ready and not self.draining and bool(self.models)
        return ok and (self.cluster is None or self.cluster.ready())

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
    def _load_sync(self, name: str, fallback: bool, only: list[int] | None = None) -> tuple[list[ModelVersion], str]:
        """The newest ``model_versions`` versions of ``name`` (or ``only`` these), and a note naming any
        version skipped.

        Without ``fallback`` any failure among them fails the load; with it, a failing version is skipped for
        the next older one.
        """
        s = self.settings
        model_dir = s.repository / name
        found = versions(model_dir)
        if only is not None:
            missing = sorted(set(only) - set(found))
            if missing:
                raise ModelLoadError(f"{model_dir} has no version {missing[0]} any more")
            found = sorted(only)
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
                        lone_threads=self._lone_threads(),
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

    def _check_name(self, name: str, old: dict[int, Served]) -> None:
        if not NAME_RE.fullmatch(name):  # the rule export names models by (contracts.repository)
            raise ApiError(400, f"invalid model name {name!r}")
        if not old and not (self.settings.repository / name).is_dir():
            raise not_found(f"no model {name!r} in the repository {self.settings.repository}")

    async def open(self, name: str, only: list[int] | None = None) -> tuple[list[ModelVersion], str]:
        """Open and warm ``name``'s versions (``only`` these, else the newest) without serving them yet;
        raises ApiError for a bad or unknown name, ModelLoadError when they cannot be loaded."""
        old = self.models.get(name, {})
        self._check_name(name, old)
        return await asyncio.to_thread(self._load_sync, name, not old and only is None, only)

    def failed(self, name: str, reason: str) -> IndexEntry:
        """Record a failed load of ``name``: what served before serves on."""
        logger.error("cannot load model %s: %s", name, reason)
        old = self.models.get(name, {})
        entry = IndexEntry(name, "READY" if old else "UNAVAILABLE", f"last load failed: {reason}", sorted(old), True)
        self.index[name] = entry
        return entry

    def swap(self, name: str, loaded: list[ModelVersion], note: str) -> dict[int, Served]:
        """Serve ``loaded`` as ``name`` from now on (synchronously: no request sees a mix); returns the old."""
        old = self.models.get(name, {})
        new = {
            m.version: Served(
                m,
                Batcher(
                    m, self.settings.max_queue_size, self.metrics.version(name, str(m.version)), self.may_run_inline
                ),
            )
            for m in loaded
        }
        for served in new.values():
            served.batcher.start()
            self.metrics.model_info.labels(*served.model.info_labels()).set(1)
        self.models[name] = new
        self.index[name] = IndexEntry(name, "READY", note, sorted(new))
        return old

    def drop(self, name: str) -> dict[int, Served]:
        """Stop serving ``name`` (404 when it is unknown); returns what served."""
        old = self.models.pop(name, None)
        if old is None and name not in self.index:
            raise not_found(f"unknown model {name!r}")
        self.index[name] = IndexEntry(name, "UNAVAILABLE", "unloaded", [])
        return old or {}

    async def retire(self, old: dict[int, Served]) -> None:
        """Answer what the replaced versions admitted, then stop their batchers."""
        for served in old.values():
            await served.batcher.stop(self.settings.request_timeout_s)

    async def load(self, name: str, only: list[int] | None = None) -> IndexEntry:
        """Load (or reload) ``name``: new versions are warmed before they replace the old ones."""
        async with self._lock:
            try:
                loaded, note = await self.open(name, only)
            except ModelLoadError as exc:
                return self.failed(name, str(exc))
            old = self.swap(name, loaded, note)
        await self.retire(old)  # requests they admitted are answered; later ones go to the new versions
        return self.index[name]

    async def unload(self, name: str) -> None:
        async with self._lock:
            old = self.drop(name)
        await self.retire(old)

    async def load_all(self) -> None:
        """Load every model of the repository; refuse to start with none when ``require_model``.

        As a replacement worker (see :mod:`service.workers.cluster`), its cluster's plan names the versions the
        other workers serve: those exactly, no others, and nothing for a name planned with none (unloaded).
        Then the worker takes model control from its supervisor."""
        repo = self.settings.repository
        names = model_names(repo)
        _warn_skipped(repo, names)
        if not names and self.settings.require_model:
            where = "does not exist" if not repo.exists() else "holds no model (<name>/<version>/model.onnx)"
            raise RuntimeError(f"model repository {repo} {where}; run bnfold-export first")
        plan = self.cluster.plan if self.cluster is not None else None
        for name in sorted(set(names) | set(plan or {})):
            if plan is None or plan.get(name):
                await self.load(name, None if plan is None else plan[name])
            elif name in plan:
                self.index[name] = IndexEntry(name, "UNAVAILABLE", "unloaded", [])
        if self.settings.require_model and not self.models:
            reasons = "; ".join(f"{e.name}: {e.reason}" for e in self.index.values())
            raise RuntimeError(f"no model in {repo} could be loaded ({reasons})")
        self.ready = True
        if self.cluster is not None:
            self.cluster.attach(self)

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


def _warn_skipped(repo: Path, names: list[str]) -> None:
    """One warning per visible folder of the repository that is not served as a model, saying why."""
    if not repo.is_dir():
        return
    for folder in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name in names:
            continue
        why = (
            "is not a valid model name (a letter or digit, then up to 127 letters, digits, '_', '.' or '-')"
            if not NAME_RE.fullmatch(folder.name)
            else "holds neither config.pbtxt nor a version folder (<name>/<version>/model.onnx)"
        )
        logger.warning("model repository %s: skipping folder %r: it %s", repo, folder.name, why)
