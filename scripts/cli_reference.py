"""Write docs/cli.md: every flag of bnfold's four commands, straight from their argparse parsers.

    .venv/bin/python scripts/cli_reference.py          # rewrite docs/cli.md
    .venv/bin/python scripts/cli_reference.py --check  # exit 1 if docs/cli.md is out of date

tests/test_docs.py fails when docs/cli.md differs from what this renders, so the reference cannot go stale.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "cli.md"


class _Captured(Exception):
    """Carries the parser a command's ``main`` built, stopped before it parsed anything."""


def parser_of(main: Callable[[list[str]], object]) -> argparse.ArgumentParser:
    """The ArgumentParser that ``main`` builds, captured at its ``parse_args`` call (nothing else runs)."""
    original = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> argparse.Namespace:
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = capture  # type: ignore[assignment,method-assign]
    try:
        main([])
    except _Captured as captured:
        return captured.args[0]  # type: ignore[no-any-return]
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise RuntimeError(f"{main} returned without parsing its arguments")


def commands() -> dict[str, argparse.ArgumentParser]:
    """The four commands' parsers, by command name."""
    sys.path.insert(0, str(ROOT))
    from export.cli import main as export_main
    from service.cli import main as serve_main
    from training.cli import main as train_main
    from training.experiments.cli import main as experiment_main

    mains = {"bnfold-train": train_main, "bnfold-experiment": experiment_main, "bnfold-export": export_main,
             "bnfold-serve": serve_main}  # fmt: skip
    return {name: parser_of(main) for name, main in mains.items()}  # type: ignore[arg-type]


def render() -> str:
    """docs/cli.md's text: each command's --help at a fixed width of 100 columns."""
    os.environ["COLUMNS"] = "100"
    parts = ["# Command-line reference\n\nGenerated from the parsers by `scripts/cli_reference.py`; do not edit.\n"]
    for name, parser in commands().items():
        parser.prog = name
        parts.append(f"## `{name}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
    return "\n".join(parts)


def main() -> int:
    check = "--check" in sys.argv[1:]
    text = render()
    if check:
        current = OUT.read_text() if OUT.is_file() else ""
        print("docs/cli.md is up to date" if current == text else "docs/cli.md is out of date: run this script")
        return 0 if current == text else 1
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
