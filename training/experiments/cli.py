"""``bnfold-experiment``: run the reproduction experiments and write their report."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from training.errors import BnfoldError
from training.logs import configure_logging

EXPERIMENTS = ("fig1", "fig2", "popstats")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bnfold-experiment",
        description="Reproduce the Batch Normalization paper's claims in miniature and write a Markdown report "
        "with tables and PNG figures.",
        epilog="examples:\n  bnfold-experiment --quick          seconds, for a smoke test\n"
        "  bnfold-experiment --docs           the real thing (minutes); copy the report to docs/reproduction.md\n"
        "  bnfold-experiment --dataset mnist --data-dir ~/mnist",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", choices=EXPERIMENTS, action="append", help="run only these (repeatable)")
    p.add_argument("--quick", action="store_true", help="tiny runs that finish in seconds")
    p.add_argument("--out", type=Path, default=Path("runs/experiments"), help="report directory")
    p.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    p.add_argument("--data-dir", type=Path, help="MNIST IDX files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--docs", type=Path, nargs="?", const=Path("docs"), help="also copy the report to DOCS/")
    args = p.parse_args(argv)
    configure_logging()
    log = logging.getLogger("training.experiments")
    from training.experiments import fig1, fig2, popstats
    from training.experiments.common import Settings, machine
    from training.experiments.report import copy_to_docs, write_report

    modules = {"fig1": fig1, "fig2": fig2, "popstats": popstats}
    settings = Settings(args.out, args.quick, args.dataset, args.data_dir, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    sections = []
    try:
        for key in args.only or EXPERIMENTS:
            started = time.perf_counter()
            log.info("running %s%s", key, " (quick)" if args.quick else "")
            sections.append(modules[key].run(settings))
            log.info("%s done in %.1f s", key, time.perf_counter() - started)
    except BnfoldError as exc:
        print(f"bnfold-experiment: error: {exc}", file=sys.stderr)
        return 2
    report = write_report(args.out, sections, machine(), args.quick)
    print(f"report: {report}")
    if args.docs:
        print(f"copied to {copy_to_docs(args.out, args.docs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
