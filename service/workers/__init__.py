"""One server, several worker processes (``BNFOLD_WORKERS``): how many, and how the cores are split.

With one worker the server runs in this process, as :func:`service.server.serve` always did. With more, a
supervisor (:mod:`service.workers.supervisor`) binds the ports, starts the workers
(:mod:`service.workers.worker`), and keeps them one server (:mod:`service.workers.cluster`).

``auto`` picks, with ``C`` the usable cores (CPU affinity, capped by a container's CPU quota): on CPU
``min(C, 4)`` workers, each with ``C // workers`` ONNX Runtime threads; on CUDA 2 workers. Why:
benchmarks/RESULTS.md ("Worker processes") measures on 2 cores that two one-thread workers serve more than
one two-thread worker (one event loop spends about 160 us of CPU per request, and while ONNX Runtime runs on
both cores that loop waits), and beyond 4 workers each worker's share of the cores is what bounds it, not the
loop, while every worker costs its own sessions' memory. On a GPU the model's compute is not on the cores, so
the front end's ceiling (requests/s per event loop) is what extra workers raise; each one costs its own CUDA
context and arena on the device.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from service.settings import Settings

AUTO_CPU_MAX = 4
AUTO_CUDA = 2


class WorkersError(ValueError):
    """``BNFOLD_WORKERS`` cannot be honoured on this machine."""


def cgroup_cores(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """The CPU quota of this container in whole cores (cgroup v2 ``cpu.max``, rounded up), None without one."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity (else the machine's count), capped by a container's
    CPU quota (a pod limited to 2 CPUs on a 64-core node has 2)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cores()
    return min(cores, quota) if quota else cores


def cuda_likely(settings: Settings) -> bool:
    """Whether the workers will run on CUDA: asked for, or ``auto`` with ONNX Runtime offering it."""
    if settings.providers != "auto":
        return settings.providers == "cuda"
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def resolve_workers(settings: Settings, cores: int | None = None) -> int:
    """The worker count for ``settings``; raises :class:`WorkersError` naming the setting when it cannot be."""
    cores = cores or usable_cores()
    cuda = cuda_likely(settings) if settings.workers == "auto" or settings.providers != "cpu" else False
    if settings.workers == "auto":
        return AUTO_CUDA if cuda else min(cores, AUTO_CPU_MAX)
    workers = int(settings.workers)
    threads = settings.intra_op_threads or 1
    if not cuda and workers * threads > cores:
        what = f"{workers} workers" + (f" x {threads} intra-op threads" if settings.intra_op_threads else "")
        raise WorkersError(
            f"BNFOLD_WORKERS={workers} (--workers): {what} need more than the {cores} usable cores; "
            f"expected at most {max(1, cores // threads)} workers"
            + (" with this BNFOLD_INTRA_OP_THREADS" if settings.intra_op_threads else "")
        )
    return workers


def threads_per_worker(settings: Settings, workers: int, cores: int | None = None) -> int:
    """ONNX Runtime intra-op threads each worker uses: the setting when given, else the cores split evenly
    (0, ONNX Runtime's own default, with a single worker)."""
    if settings.intra_op_threads or workers == 1:
        return settings.intra_op_threads
    return max(1, (cores or usable_cores()) // workers)
