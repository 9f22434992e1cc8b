"""The run folder a training run writes into: claimed at start, healed of what a killed run left behind.

A run folder holds ``config.json``, ``metrics.jsonl``, ``checkpoints/`` and the plots. One run writes into
it at a time (rank 0 under torchrun). A checkpoint is built in a hidden ``checkpoints/.step-*.partial``
folder and renamed into place when complete (:func:`training.atomic.staging_dir`); the staging folder
removes itself on any exception, so only a kill (SIGKILL, power loss) during a checkpoint write leaves one.
The next run in the folder, new or resumed, deletes such leftovers before it writes anything.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from training.checkpoint import partial_checkpoints
from training.errors import ConfigError

logger = logging.getLogger(__name__)


def heal_run_dir(run_dir: Path) -> list[Path]:
    """Delete the partial checkpoints a killed run left in ``run_dir``; return what was removed.

    Precondition: no other process is writing checkpoints into ``run_dir`` now (one run per folder).
    """
    removed = partial_checkpoints(run_dir)
    for leftover in removed:
        logger.info("removing %s, a checkpoint whose write was interrupted", leftover)
        shutil.rmtree(leftover)
    return removed


def claim_run_dir(run_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Heal and create ``run_dir``; refuse to mix a new run into an old one unless resuming or told to overwrite.

    A folder whose only checkpoints were partial ones holds no checkpoint once healed, so a new run may use it.
    """
    heal_run_dir(run_dir)
    old = run_dir / "checkpoints"
    if not resuming and old.is_dir() and any(old.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"run directory {run_dir} already holds checkpoints; pass --resume {run_dir} to continue that run, "
                "--overwrite to replace it, or another --out"
            )
        logger.info("--overwrite: removing the previous run in %s", run_dir)
        shutil.rmtree(old)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
