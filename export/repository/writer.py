"""The model repository, in Triton Inference Server's layout (also what KServe's Triton runtime reads):

    <repository>/<name>/config.pbtxt             platform onnxruntime_onnx, batching, dims, label file
    <repository>/<name>/labels.txt               one class label per line, in output order
    <repository>/<name>/<version>/model.onnx
    <repository>/<name>/<version>/export_report.json

    <repository>/<name>/<version>/config.pbtxt   and labels.txt: the same files as the version had them

Versions count up from 1. Each export is one transaction (``new_version``): the model folder is staged as a
hidden hard-linked copy ``<repository>/.<name>.<pid>-*.partial``, the new version and the shared files are
written into it, and it replaces ``<name>`` in one atomic rename. No reader ever sees half of an export.
Staging folders of processes that no longer run are removed by the next export.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from contracts import repository as repository_format
from contracts.repository import RepositoryFormatError, TensorSpec, build_config, next_version, render_labels
from contracts.repository import render_config as render_config_message
from export.errors import ExportError
from training.atomic import fsync_dir, public_mode, write_bytes_atomic

logger = logging.getLogger(__name__)

PARTIAL_RE = re.compile(r"^\.(.+)\.(\d+)-[^.]*\.partial$")


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model name (:func:`contracts.repository.check_model_name`), else raise
    ExportError saying what is allowed."""
    try:
        return repository_format.check_model_name(name)
    except RepositoryFormatError as exc:
        raise ExportError(str(exc)) from None


def render_config(
    name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    max_batch_size: int,
    max_queue_delay_us: int,
    layout: str = "NCHW",
    labelled: tuple[str, ...] | None = None,
) -> str:
    """config.pbtxt text for an ONNX Runtime model with dynamic batching and a label file on the output, built
    as Triton's ModelConfig message (:func:`contracts.repository.build_config`)."""
    try:
        config = build_config(name, inputs, outputs, max_batch_size, max_queue_delay_us, layout, labelled)
    except RepositoryFormatError as exc:
        raise ExportError(str(exc)) from None
    return render_config_message(config)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(repository: Path) -> list[Path]:
    """Delete the staging folders of exports that were killed (their process no longer runs); return them."""
    stale = [
        p
        for p in (repository.iterdir() if repository.is_dir() else [])
        if (m := PARTIAL_RE.match(p.name)) and not _pid_alive(int(m.group(2)))
    ]
    for p in stale:
        logger.info("removing %s, left by an interrupted export", p)
        shutil.rmtree(p, ignore_errors=True)
    return stale


@contextlib.contextmanager
def _repository_lock(repository: Path) -> Iterator[None]:
    """One export at a time per repository: an exclusive flock on the repository folder itself (no lock file)."""
    repository.mkdir(parents=True, exist_ok=True)
    fd = os.open(repository, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _link_tree(src: Path, dst: Path) -> None:
    """Copy ``src`` into the existing ``dst`` as hard links (no data copied; old files are never written)."""
    for child in src.iterdir():
        if child.name.startswith("."):
            continue  # leftovers of older bnfold versions' staging are not carried over
        if child.is_dir():
            shutil.copytree(child, dst / child.name, copy_function=os.link)
        else:
            os.link(child, dst / child.name)


def _swap_in(stage: Path, model_dir: Path) -> None:
    """Make ``stage`` the model folder in one atomic step; the old folder ends up at ``stage``'s path."""
    if not model_dir.exists():
        os.rename(stage, model_dir)
    elif _rename_exchange(stage, model_dir):
        shutil.rmtree(stage, ignore_errors=True)
    else:  # no RENAME_EXCHANGE here (not Linux, or the filesystem refuses it): two renames
        old = stage.with_name(stage.name + ".old")
        os.rename(model_dir, old)
        os.rename(stage, model_dir)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(model_dir.parent)


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with Linux's renameat2(RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (38, 22, 95):  # ENOSYS, EINVAL, EOPNOTSUPP: the kernel or filesystem lacks it
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def _write_model_files(folder: Path, config_text: str | None, labels: list[str] | None) -> None:
    if labels is not None:
        write_bytes_atomic(folder / repository_format.LABELS, render_labels(labels).encode())
    if config_text is not None:
        write_bytes_atomic(folder / repository_format.CONFIG, config_text.encode())


def _fsync_tree(root: Path) -> None:
    for child in root.rglob("*"):
        if child.is_file():
            with open(child, "rb") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def new_version(
    repository: Path, name: str, config_text: str | None = None, labels: list[str] | None = None
) -> Iterator[tuple[Path, int]]:
    """Yield (version folder to fill, version number); on success the version appears, all at once.

    One transaction: the new version, ``config.pbtxt`` and ``labels.txt`` (also copied into the version
    folder, so a version holds everything a server needs) become visible together, or not at all. The model
    folder is staged as a hard-linked copy beside it and swapped in with one atomic rename; a failure, an
    exception or a refused verification leaves the repository byte for byte as it was, folders included.
    A killed export leaves only a hidden staging folder, which the next export removes.
    """
    model_dir = repository / check_model_name(name)
    created = _missing_folders(repository)
    try:
        with _repository_lock(repository):
            yield from _transaction(repository, name, model_dir, config_text, labels)
    except BaseException:
        _remove_if_empty(created)
        raise


def _missing_folders(path: Path) -> list[Path]:
    """The folders of ``path`` that do not exist yet, innermost first (the ones a failed export must remove)."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first) that this export created, if they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another export wrote there meanwhile) or already gone
            return


def _transaction(
    repository: Path, name: str, model_dir: Path, config_text: str | None, labels: list[str] | None
) -> Iterator[tuple[Path, int]]:
    """``new_version``'s body, under the repository lock."""
    remove_stale_partials(repository)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}-", suffix=".partial", dir=repository))
    try:
        public_mode(stage, directory=True)
        if model_dir.is_dir():
            _link_tree(model_dir, stage)
        version = next_version(stage)
        version_dir = stage / str(version)
        version_dir.mkdir()
        public_mode(version_dir, directory=True)
        yield version_dir, version
        _write_model_files(version_dir, config_text, labels)
        _write_model_files(stage, config_text, labels)
        _fsync_tree(version_dir)
        _swap_in(stage, model_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def write_model(
    repository: Path,
    name: str,
    onnx_file: Path,
    labels: list[str],
    *,
    report: dict[str, Any] | None = None,
    max_batch_size: int = 64,
    max_queue_delay_us: int = 500,
) -> tuple[Path, int]:
    """Add any ONNX model (and its report) as the next version of ``name``, as one transaction.

    ``config.pbtxt`` lists every input and output of the graph with its type and shape (outputs' shapes as
    declared, else from one ONNX Runtime run); ``labels`` name the classes of its first floating-point
    (N, classes) output, and must be as many. Returns the model folder and the new version number.
    """
    import onnx

    from export.graph.inspect import declared_outputs, graph_inputs
    from export.sources.onnx_file import classes_output, probe_outputs

    model = onnx.load(str(onnx_file))
    inputs = graph_inputs(model)
    outputs = declared_outputs(model) or probe_outputs(model, onnx_file, inputs)
    labelled = classes_output(outputs)
    if labels and (labelled is None or labelled.dims[0] != len(labels)):
        found = f"output {labelled.name!r} has {labelled.dims[0]} classes" if labelled else "no output is (N, classes)"
        raise ExportError(f"{onnx_file}: {len(labels)} labels given, but {found}")
    names = (labelled.name,) if labelled is not None and labels else ()
    config = render_config(name, inputs, outputs, max_batch_size, max_queue_delay_us, labelled=names)
    with new_version(repository, name, config, labels) as (version_dir, version):
        shutil.copyfile(onnx_file, version_dir / "model.onnx")
        if report is not None:
            write_bytes_atomic(version_dir / "export_report.json", (json.dumps(report, indent=2) + "\n").encode())
    return repository / name, version
