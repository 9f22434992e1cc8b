"""``bnfold-experiment``: run the reproduction experiments over several seeds and write their report."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from training.errors import BnfoldError
from training.logs import configure_logging

EXPERIMENTS = ("fig1", "fig2", "popstats")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bnfold-experiment",
        description="Reproduce the Batch Normalization paper's claims in miniature over several seeds and write a "
        "Markdown report with tables, figures (mean with a band across seeds) and a verdict per claim.",
        epilog="examples:\n  bnfold-experiment --quick          seconds, for a smoke test\n"
        "  bnfold-experiment --docs           the real thing (minutes); copy the report to docs/reproduction.md\n"
        "  bnfold-experiment --dataset mnist --data-dir ~/mnist   the paper's scale (hours; shows an ETA)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", choices=EXPERIMENTS, action="append", help="run only these (repeatable)")
    p.add_argument("--quick", action="store_true", help="tiny runs that finish in seconds")
    p.add_argument("--out", type=Path, default=Path("runs/experiments"), help="report directory")
    p.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    p.add_argument("--data-dir", type=Path, help="MNIST IDX files")
    p.add_argument("--seed", type=int, default=0, help="first seed; also fixes the validation split")
    p.add_argument("--seeds", type=_positive, default=5, help="how many seeds each experiment runs (default 5)")
    p.add_argument("--jobs", type=_positive, help="worker processes (default: one per core; 1 with --quick)")
    p.add_argument("--docs", type=Path, nargs="?", const=Path("docs"), help="also copy the report to DOCS/")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    configure_logging()
    from training.experiments.common import Settings
    from training.experiments.provenance import finished, provenance
    from training.experiments.report import copy_to_docs, make_record, write_report
    from training.experiments.runner import run_experiments

    jobs = args.jobs or (1 if args.quick else os.cpu_count() or 1)  # starting workers costs more than --quick
    settings = Settings(args.out, args.quick, args.dataset, args.data_dir, args.seed, args.seeds, jobs)
    args.out.mkdir(parents=True, exist_ok=True)
    started, source = time.perf_counter(), provenance(jobs)  # the code as it is when the runs start
    try:
        sections = run_experiments(settings, args.only or list(EXPERIMENTS))
    except BnfoldError as exc:
        print(f"bnfold-experiment: error: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - started
    logging.getLogger("training.experiments").info("all experiments done in %.0f s", wall)
    report = write_report(args.out, make_record(settings, sections, {**source, "finished": finished()}, wall))
    print(f"report: {report}")
    if args.docs:
        print(f"copied to {copy_to_docs(args.out, args.docs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
