"""A tqdm progress bar that shows itself on a terminal and stays silent in logs and CI by default."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm


def progress_bar(total: int, initial: int = 0, enabled: bool | None = None, desc: str = "") -> Any:
    """A context-managed tqdm bar; ``enabled=None`` shows it only when stderr is a terminal."""
    return tqdm(
        total=total,
        initial=initial,
        disable=None if enabled is None else not enabled,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        leave=False,
    )
