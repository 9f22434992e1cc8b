"""Where a report came from: the commit, whether the tree had changes, library versions and the machine."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

LIBRARIES = ("torch", "numpy", "scipy", "scikit-learn", "matplotlib")
ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def commit() -> dict[str, str | bool | None]:
    """HEAD of the checkout the code runs from, and whether tracked files differ from it."""
    head = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": head, "dirty": None if status is None else bool(status)}


def versions() -> dict[str, str]:
    """Python and the installed versions of the libraries the numbers depend on."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def finished() -> str:
    """Now, in UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def cpu() -> str:
    """The processor (name and model number) and the instruction set torch's kernels dispatch to: float32
    results are bit-exact only between machines that agree on these (a kernel's blocking, hence its
    rounding, follows the processor)."""
    import torch

    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    isa = torch.backends.cpu.get_cpu_capability()
    return f"{fields.get('model name', 'unknown')} (model {fields.get('model', '?')}); torch {isa}"


def provenance(workers: int) -> dict[str, object]:
    """Everything the report states about where and with what it ran (take it before the runs start)."""
    return {
        **commit(),
        "versions": versions(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}",
        "workers": workers,
        "threads_per_run": 1,
        "cpu": cpu(),
        "finished": finished(),
    }
