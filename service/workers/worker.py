"""One worker process of a supervised server: the single-process server on inherited sockets.

The worker dies with its supervisor (``PR_SET_PDEATHSIG`` on Linux), leaves the supervisor's process group
(so a terminal's Ctrl-C reaches the supervisor alone, which passes it on once), tags every log line with
its slot (``worker 0``, ``worker 1``, ...), and runs ONNX Runtime with its share of the cores.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
from typing import Any

from service.settings import Settings

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent exits, however it exits (no orphans)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def log_format(slot: int) -> str:
    return f"%(asctime)s %(levelname)s worker {slot} [%(process)d] %(name)s: %(message)s"


def run_worker(
    slot: int,
    conn: Any,
    settings: Settings,
    threads: int,
    sockets: list[socket.socket],
    shared: Any,
    plan: dict[str, list[int]] | None,
    metrics_dir: str,
) -> None:
    """The worker's main: serve on ``sockets`` until the supervisor's signal; exit with serve's status."""
    die_with_parent()
    if os.getppid() == 1:  # the supervisor died while this process started
        sys.exit(1)
    os.setpgrp()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    logging.basicConfig(level=settings.log_level.upper(), format=log_format(slot), datefmt="%H:%M:%S", force=True)
    from service.server import serve
    from service.workers.cluster import Cluster

    settings = settings.model_copy(update={"intra_op_threads": threads})
    cluster = Cluster(slot, shared, conn, plan)
    sys.exit(serve(settings, sockets=sockets, cluster=cluster))
