"""``python -m training.sample_image``: write one real validation digit as a PNG, to try the image endpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def write_digit(out: Path, index: int = 0, seed: int = 0) -> str:
    """Save validation digit ``index`` of the default split (8x8, grey) to ``out``; return its label."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from training.data.base import stratified_split

    bunch = load_digits()
    _, val = stratified_split(bunch.target, 0.2, seed)
    i = int(val[index % len(val)])
    pixels = np.round(bunch.images[i] / 16.0 * 255).astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(out)
    return str(int(bunch.target[i]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.sample_image", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("digit.png"))
    p.add_argument("--index", type=int, default=0, help="which validation sample")
    args = p.parse_args(argv)
    label = write_digit(args.out, args.index)
    print(f"wrote {args.out}: a handwritten {label} from the validation split")
    return 0


if __name__ == "__main__":
    sys.exit(main())
