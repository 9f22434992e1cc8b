"""``bnfold-export`` (also ``python -m export``): checkpoint -> verified ONNX -> model repository."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from training.errors import BnfoldError
from training.logs import configure_logging

QUIET_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export", "torch._export")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bnfold-export",
        description="Fold every BatchNorm of a checkpoint into its weights, export ONNX, verify it numerically "
        "and add it as a new version to a Triton-layout model repository.",
        epilog="example:\n  bnfold-export --checkpoint runs/demo --repository model_repository --name digits",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="run directory or checkpoint directory")
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="model repository root")
    p.add_argument("--name", help="model name in the repository (default <model>-<dataset>)")
    p.add_argument("--max-batch-size", type=int, default=64, help="config.pbtxt max_batch_size (default 64)")
    p.add_argument("--max-queue-delay-us", type=int, default=500, help="dynamic batching delay (default 500)")
    p.add_argument("--fp16", action="store_true", help="export the half-precision variant (<name>-fp16)")
    p.add_argument("--data-dir", type=Path, help="where the checkpoint's dataset lives now, if it moved")
    p.add_argument("--json", action="store_true", help="print the export report as JSON instead of tables")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.export internals, not the user's concern
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    try:
        from export.checkpoint_export import export_checkpoint

        written = export_checkpoint(
            args.checkpoint,
            args.repository,
            args.name,
            max_batch_size=args.max_batch_size,
            max_queue_delay_us=args.max_queue_delay_us,
            fp16=args.fp16,
            data_dir=args.data_dir,
        )
    except BnfoldError as exc:
        print(f"bnfold-export: error: {exc}", file=sys.stderr)
        print("bnfold-export: the model repository was left unchanged", file=sys.stderr)
        return 2
    report = written.report
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.fold.table())
        print()
        print(f"verification ({report.precision}):")
        print(report.verification_table())
        print()
    print(
        f"wrote {written.path / 'model.onnx'} (version {written.version}, {sum(report.nodes.values())} ONNX nodes, "
        "0 BatchNormalization)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
