"""A model's class labels, from the user: ``--labels FILE``, else the class folders of ``--images``, else numbers."""

from __future__ import annotations

from pathlib import Path

from export.errors import ExportError
from export.sources.images import ImageSet


def resolve_labels(labels_file: Path | None, classes: int, images: ImageSet | None) -> list[str]:
    """--labels FILE, else the class folders of --images, else "0".."N-1"; must match the model's outputs."""
    if labels_file is not None:
        if not labels_file.is_file():
            raise ExportError(f"--labels {labels_file}: no such file")
        labels = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
        where = f"--labels {labels_file}"
    elif images is not None and images.classes is not None:
        labels, where = list(images.classes), f"the class folders of {images.root}"
    else:
        return [str(i) for i in range(classes)]
    if len(labels) != classes:
        raise ExportError(f"{where} names {len(labels)} classes, the model returns {classes} logits")
    return labels
