"""A worker's view of the other workers: shared readiness, and model control that reaches every worker.

Design (the supervisor, :mod:`service.workers.supervisor`, holds the per-server state):

* Readiness lives in shared memory created by the supervisor: one flag per worker slot (a worker sets its
  own once it serves; the supervisor clears the slot of a worker that died) and one draining flag (set by
  the supervisor on SIGTERM). ``/v2/health/ready`` on any worker is 200 only while every flag is up.
* Model control is a two-phase commit run by the supervisor over one pipe per worker. The worker that
  received ``load`` or ``unload`` sends it to the supervisor and waits. The supervisor, one operation at a
  time, asks every live worker to *prepare* (open and warm the new sessions beside the old ones, or check
  the name for an unload); only when all have prepared does it send *commit*, which each worker applies
  synchronously on its event loop (the swap of :meth:`ModelManager.swap`) before it acknowledges. The
  supervisor answers the requesting worker after every commit is acknowledged, so after the answer no new
  request on any worker reaches the old version. When any worker fails to prepare, every worker gets
  *abort* and keeps what it served (a failed load is recorded in every worker's index).
* The supervisor keeps the versions each model serves after every commit (the *plan*); a replacement
  worker loads exactly that plan at its start, so it joins serving what the others serve.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from service.errors import ApiError, not_found
from service.manager import ModelManager
from service.model import ModelLoadError

Plan = dict[str, list[int]]


@dataclass
class Shared:
    """Shared memory made by the supervisor: ``ready`` (one byte per worker slot), ``draining``,
    ``connections`` (the HTTP connections each worker slot holds, see :mod:`service.workers.accepting`) and
    ``grpc_calls`` (the gRPC inferences each is running)."""

    ready: Any  # multiprocessing.Array("b", workers)
    draining: Any  # multiprocessing.Value("b")
    connections: Any  # multiprocessing.Array("i", workers)
    grpc_calls: Any  # multiprocessing.Array("i", workers)

    def all_ready(self) -> bool:
        return not self.draining.value and all(self.ready)


class Cluster:
    """One worker's link to the supervisor (see the module docstring)."""

    def __init__(self, slot: int, shared: Shared, conn: Any, plan: Plan | None) -> None:
        self.slot = slot
        self.shared = shared
        self.conn = conn
        self.plan = plan
        self.manager: ModelManager | None = None
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[tuple[int, str]]] = {}
        self._staged: dict[int, tuple[str, str, Any]] = {}

    @property
    def size(self) -> int:
        """How many workers the server runs."""
        return len(self.shared.connections)

    def clients(self) -> int:
        """The HTTP connections and gRPC inferences of every worker together, as they publish them."""
        return sum(self.shared.connections[:]) + sum(self.shared.grpc_calls[:])

    def publish_grpc_calls(self, calls: int) -> None:
        """This worker now runs ``calls`` gRPC inferences."""
        self.shared.grpc_calls[self.slot] = calls

    def ready(self) -> bool:
        """Every worker serves and the server is not draining."""
        return self.shared.all_ready()

    def mark_ready(self, ready: bool) -> None:
        self.shared.ready[self.slot] = int(ready)
        if ready and self.manager is not None:  # with what it serves: the plan of later replacements
            serving = {name: sorted(self.manager.models.get(name, {})) for name in self.manager.index}
            self.conn.send(("ready", serving))

    def attach(self, manager: ModelManager) -> None:
        """Take control messages on the running event loop from now on."""
        self.manager = manager
        asyncio.get_running_loop().add_reader(self.conn.fileno(), self._readable)

    def detach(self) -> None:
        asyncio.get_running_loop().remove_reader(self.conn.fileno())

    async def control(self, op: str, name: str) -> tuple[int, str]:
        """Run ``op`` (load or unload) on every worker; (HTTP status, error message or "")."""
        rid = next(self._ids)
        future: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        self.conn.send(("request", rid, op, name))
        return await future

    def _readable(self) -> None:
        try:
            while self.conn.poll():
                self._handle(self.conn.recv())
        except (EOFError, OSError):  # the supervisor is gone: this worker is stopped by it or with it
            self.detach()

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind, tid = message[0], message[1]
        if kind == "reply":
            future = self._waiting.pop(tid, None)
            if future is not None and not future.done():
                future.set_result((message[2], message[3]))
        elif kind == "prepare":
            asyncio.get_running_loop().create_task(self._prepare(tid, message[2], message[3]))
        elif kind == "commit":
            self._commit(tid)
        elif kind == "abort":
            self._abort(tid, message[2])

    async def _prepare(self, tid: int, op: str, name: str) -> None:
        manager = self.manager
        assert manager is not None
        try:
            if op == "load":
                self._staged[tid] = (op, name, await manager.open(name))
            elif name in manager.models or name in manager.index:
                self._staged[tid] = (op, name, None)
            else:
                raise not_found(f"unknown model {name!r}")
            self.conn.send(("prepared", tid, 200, "", False))
        except ApiError as exc:
            self.conn.send(("prepared", tid, exc.status, exc.message, False))
        except ModelLoadError as exc:  # a failed load: answered 400, and recorded in every worker's index
            self.conn.send(("prepared", tid, 400, str(exc), True))

    def _commit(self, tid: int) -> None:
        manager = self.manager
        assert manager is not None
        op, name, opened = self._staged.pop(tid)
        old = manager.swap(name, *opened) if op == "load" else manager.drop(name)
        asyncio.get_running_loop().create_task(manager.retire(old))
        self.conn.send(("committed", tid, name, sorted(manager.models.get(name, {}))))

    def _abort(self, tid: int, failure: tuple[str, str] | None) -> None:
        self._staged.pop(tid, None)  # sessions opened for it are dropped with it
        if failure is not None and self.manager is not None:
            self.manager.failed(*failure)
        self.conn.send(("aborted", tid))
