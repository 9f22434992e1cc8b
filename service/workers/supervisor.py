"""The parent of ``bnfold-serve --workers N``: binds the ports, starts N workers, keeps them one server.

Written in the spirit of ``uvicorn.supervisors.Multiprocess`` (it shares the listening socket with spawned
workers the same way) because that supervisor lacks what one server needs here: readiness across workers,
model control that reaches every worker (:mod:`service.workers.cluster`), a drain whose exit status says
whether it lost anything, a clear line when a worker cannot start, and a limit on restart loops.

* The HTTP socket is bound and listening here and inherited by every worker; each worker accepts its share
  of the new connections (:mod:`service.workers.accepting`). The gRPC port is held here with
  ``SO_REUSEPORT`` (so a taken port fails the start with one line), and every worker listens on it with
  ``SO_REUSEPORT`` too.
* prometheus_client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory, or the one given,
  emptied at start) is set for the workers; a dead worker is marked with ``mark_process_dead``.
* A worker that exits before every worker was ready once stops the start (exit 3). Later, a worker that dies
  is replaced at once (its readiness slot is cleared, so the server reports 503 meanwhile); more than
  ``MAX_CRASHES`` deaths within ``CRASH_WINDOW_S`` stop the server with a message (exit 1).
* First SIGTERM or SIGINT: the shared draining flag turns readiness off on every worker at once, the
  supervisor closes its copy of the listening socket, and every worker drains as a single server does
  (:mod:`service.server`); the exit status is 0 when every worker exited 0. A second signal is passed on:
  the workers stop at once and the supervisor exits 1. Workers die with the supervisor (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections import deque
from multiprocessing.connection import wait
from typing import Any

from service.settings import Settings
from service.workers.cluster import Plan, Shared
from service.workers.worker import run_worker

logger = logging.getLogger("service.supervisor")
MAX_CRASHES = 5
CRASH_WINDOW_S = 60.0
PREPARE_TIMEOUT_S = 600.0  # opening and warming a model on every worker
COMMIT_TIMEOUT_S = 30.0


class Worker:
    """One worker process and the supervisor's end of its pipe."""

    def __init__(self, ctx: Any, slot: int, args: tuple[Any, ...]) -> None:
        self.slot = slot
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=run_worker, args=(slot, child, *args), name=f"bnfold-worker-{slot}")
        self.process.start()
        child.close()
        self.ready = False
        self.exit_code: int | None = None

    @property
    def alive(self) -> bool:
        return self.exit_code is None


def bind_sockets(settings: Settings) -> list[socket.socket]:
    """The HTTP listening socket, and the gRPC port held with SO_REUSEPORT; OSError names the setting."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    held: list[socket.socket] = []
    for port, name, listen in ((settings.port, "BNFOLD_PORT", True), (settings.grpc_port, "BNFOLD_GRPC_PORT", False)):
        if not port:
            continue
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR if listen else socket.SO_REUSEPORT, 1)
        try:
            sock.bind((settings.host, port))
        except OSError as exc:
            sock.close()
            for s in held:
                s.close()
            raise OSError(f"cannot listen on {settings.host}:{port} ({name}): {exc.strerror}") from None
        if listen:
            sock.listen(2048)
        held.append(sock)
    return held


def metrics_directory() -> tuple[str, bool]:
    """The multiprocess metrics directory, emptied; and whether it is ours to remove at the end."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.remove(os.path.join(given, name))
        return given, False
    path = tempfile.mkdtemp(prefix="bnfold-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path  # the spawned workers inherit it
    return path, True


class Supervisor:
    """Starts, watches, replaces and stops the workers (see the module docstring)."""

    def __init__(self, settings: Settings, workers: int, threads: int) -> None:
        self.settings = settings
        self.count = workers
        self.threads = threads
        self.ctx = multiprocessing.get_context("spawn")
        self.shared = Shared(
            self.ctx.Array("b", workers, lock=False),
            self.ctx.Value("b", 0, lock=False),
            self.ctx.Array("i", workers, lock=False),
            self.ctx.Array("i", workers, lock=False),
        )
        self.workers: dict[int, Worker] = {}
        self.plan: Plan | None = None  # versions served, once every worker has been ready
        self.crashes: deque[float] = deque()
        self.signals: list[int] = []
        self.backlog: deque[tuple[Worker, tuple[Any, ...]]] = deque()
        self.wake_r, self.wake_w = socket.socketpair()
        self.sockets: list[socket.socket] = []
        self.tid = 0
        self.outcome: int | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until a signal (or a failure); the exit status."""
        try:
            self.sockets = bind_sockets(self.settings)
        except OSError as exc:
            logger.error("%s", exc)
            return 3
        directory, ours = metrics_directory()
        self.metrics_dir = directory
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            logger.info(
                "starting %d workers (%d ONNX Runtime threads each) on %s:%d",
                self.count,
                self.threads,
                self.settings.host,
                self.settings.port,
            )
            for slot in range(self.count):
                self._start(slot)
            while self.outcome is None:
                self._step()
            return self.outcome
        finally:
            self._kill_all()
            for s, handler in previous.items():
                signal.signal(s, handler)
            for sock in self.sockets:
                sock.close()
            if ours:
                shutil.rmtree(directory, ignore_errors=True)

    def _start(self, slot: int) -> None:
        shared, sockets = self.shared, self.sockets
        args = (self.settings, self.threads, sockets[:1], shared, self.plan, self.metrics_dir)
        self.workers[slot] = Worker(self.ctx, slot, args)

    def _on_signal(self, sig: int, frame: Any) -> None:
        self.signals.append(sig)
        self.wake_w.send(b"\0")

    def _step(self) -> None:
        """Wait for something to happen (a message, a worker's exit, a signal) and handle it."""
        while self.backlog and self.outcome is None:
            self._message(*self.backlog.popleft())
        live = [w for w in self.workers.values() if w.alive]
        objects: list[Any] = [self.wake_r] + [w.conn for w in live] + [w.process.sentinel for w in live]
        for ready in wait(objects, timeout=1.0):
            if ready is self.wake_r:
                self.wake_r.recv(64)
        self._signals()
        for worker in live:
            self._poll(worker)

    def _poll(self, worker: Worker) -> None:
        """Handle what ``worker`` sent, then its exit if it has exited."""
        try:
            while worker.alive and worker.conn.poll():
                self._message(worker, worker.conn.recv())
        except (EOFError, OSError):
            pass
        if worker.alive and not worker.process.is_alive():
            self._exited(worker)

    def _message(self, worker: Worker, message: tuple[Any, ...]) -> None:
        if message[0] == "ready":
            worker.ready = True
            if self.plan is None and all(w.ready for w in self.workers.values()):
                self.plan = message[1]
                logger.info("all %d workers are ready", self.count)
        elif message[0] == "request":
            status, error = self._control(message[2], message[3])
            self._send(worker, ("reply", message[1], status, error))

    def _send(self, worker: Worker, message: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):  # it died; its exit is handled where its sentinel is
            worker.conn.send(message)

    # ---- deaths and signals -------------------------------------------------------------------------------
    def _exited(self, worker: Worker) -> None:
        worker.process.join()
        worker.exit_code = code = worker.process.exitcode
        self.shared.ready[worker.slot] = 0
        self.shared.connections[worker.slot] = 0  # its connections and calls died with it
        self.shared.grpc_calls[worker.slot] = 0
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.process.pid, self.metrics_dir)
        if self.shared.draining.value:
            if not any(w.alive for w in self.workers.values()):
                clean = all(w.exit_code == 0 for w in self.workers.values())
                self.outcome = 0 if clean and self.outcome is None and not self.forced else 1
            return
        if self.plan is None:
            logger.error(
                "worker %d exited with %s before the server was ready (its error is above): BNFOLD_WORKERS=%d "
                "workers could not start; stopping",
                worker.slot,
                code,
                self.count,
            )
            self.outcome = 3
            return
        self._replace(worker)

    def _replace(self, worker: Worker) -> None:
        now = time.monotonic()
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > CRASH_WINDOW_S:
            self.crashes.popleft()
        if len(self.crashes) > MAX_CRASHES:
            logger.error(
                "workers died %d times within %.0f s (last: worker %d, exit %s); stopping the server instead "
                "of restarting in a loop",
                len(self.crashes),
                CRASH_WINDOW_S,
                worker.slot,
                worker.exit_code,
            )
            self._drain()
            self.forced = True
            return
        logger.warning(
            "worker %d (pid %s) exited with %s; starting a replacement",
            worker.slot,
            worker.process.pid,
            worker.exit_code,
        )
        self._start(worker.slot)

    forced = False

    def _signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if self.shared.draining.value:
                logger.warning("signal %d again: stopping every worker at once", sig)
                self.forced = True
                self._forward(signal.SIGINT)
            else:
                logger.info("signal %d: readiness off; every worker drains", sig)
                self._drain()
        if self.shared.draining.value and not any(w.alive for w in self.workers.values()):
            self.outcome = 1 if self.forced else 0

    def _drain(self) -> None:
        self.shared.draining.value = 1
        for sock in self.sockets[:1]:  # the workers hold their own copies until they stop accepting
            sock.close()
        self._forward(signal.SIGTERM)

    def _forward(self, sig: int) -> None:
        for worker in self.workers.values():
            if worker.alive and worker.process.pid is not None:
                os.kill(worker.process.pid, sig)

    def _kill_all(self) -> None:
        for worker in self.workers.values():
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join()

    # ---- model control: two-phase commit over every live worker (see service.workers.cluster) -------------
    def _control(self, op: str, name: str) -> tuple[int, str]:
        self.tid += 1
        tid = self.tid
        members = [w for w in self.workers.values() if w.alive]
        for w in members:
            self._send(w, ("prepare", tid, op, name))
        replies = self._collect(members, "prepared", tid, PREPARE_TIMEOUT_S)
        failures = [(r[2], r[3], r[4]) for r in replies.values() if r[2] != 200]
        failures += [
            (503, f"worker {w.slot} did not answer in time", False)
            for w in members
            if w.slot not in replies and w.alive
        ]
        if failures:
            status, error, load_failed = failures[0]
            for w in members:
                self._send(w, ("abort", tid, (name, error) if load_failed else None))
            self._collect(members, "aborted", tid, COMMIT_TIMEOUT_S)
            return status, error
        for w in members:
            self._send(w, ("commit", tid))
        for reply in self._collect(members, "committed", tid, COMMIT_TIMEOUT_S).values():
            if self.plan is not None:
                self.plan[reply[2]] = reply[3]
        logger.info("model control: %s %s done on %d workers", op, name, len(members))
        return 200, ""

    def _collect(self, members: list[Worker], kind: str, tid: int, timeout: float) -> dict[int, tuple[Any, ...]]:
        """Each member's ``kind`` reply to ``tid`` (a member that dies or stays silent has none); other
        messages that arrive meanwhile wait in the backlog."""
        replies: dict[int, tuple[Any, ...]] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            waiting = [w for w in members if w.slot not in replies and w.alive and w.process.is_alive()]
            if not waiting:
                break
            for conn in wait([w.conn for w in waiting], timeout=min(1.0, deadline - time.monotonic())):
                worker = next(w for w in waiting if w.conn is conn)
                try:
                    message: tuple[Any, ...] = worker.conn.recv()
                except (EOFError, OSError):
                    continue
                if message[0] == kind and message[1] == tid:
                    replies[worker.slot] = message
                else:
                    self.backlog.append((worker, message))
        return replies
