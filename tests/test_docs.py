"""The README tells the truth: its settings table, every flag it names, the CLI reference and its
troubleshooting messages are checked against the code, not against substrings of themselves."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def section(heading: str) -> str:
    """The README text under ``heading`` (e.g. "### Configuration") up to the next heading of its level or above."""
    level = heading.split()[0]
    start = README.index(f"\n{heading}\n")
    rest = README[start + len(heading) + 2 :]
    ends = [m.start() for m in re.finditer(rf"^#{{1,{len(level)}}} ", rest, re.MULTILINE)]
    return rest[: ends[0]] if ends else rest


def table(text: str) -> list[list[str]]:
    """The rows of the first Markdown table in ``text``, header and separator left out."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def _default_matches(default: Any, cell: str) -> bool:
    text = cell.strip("`")
    if default is None:
        return cell.startswith(("unset", "from config.pbtxt"))
    if isinstance(default, bool):
        return text == str(default).lower()
    if isinstance(default, int | float):
        try:
            return float(text) == float(default)
        except ValueError:
            return False
    return text == str(default)


def test_the_settings_table_is_every_setting_with_its_default() -> None:
    rows = {cells[0].strip("`"): cells[1] for cells in table(section("### Configuration"))}
    assert set(rows) == {f"BNFOLD_{name.upper()}" for name in Settings.model_fields}
    for name, field in Settings.model_fields.items():
        cell = rows[f"BNFOLD_{name.upper()}"]
        assert _default_matches(field.default, cell), f"BNFOLD_{name.upper()}: code {field.default!r}, README {cell}"


def test_the_cli_reference_is_generated_from_the_four_parsers() -> None:
    reference = _reference()
    assert (ROOT / "docs" / "cli.md").read_text() == reference.render(), (
        "docs/cli.md is out of date: run .venv/bin/python scripts/cli_reference.py"
    )


OTHER_TOOLS = {  # flags the README names that belong to other programs: torchrun, kubectl, docker compose,
    "--nproc-per-node", "--nnodes", "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id", "--from-literal",  # tritonserver,
    "--scale", "--model-repository", "--seconds", "--soak", "--loadgen", "--json", "--help", "--check",  # benchmarks
}  # fmt: skip


def test_every_flag_the_readme_names_exists() -> None:
    parsers = _reference().commands()
    real = {flag for p in parsers.values() for action in p._actions for flag in action.option_strings}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", README))
    assert named - real - OTHER_TOOLS == set(), "the README names flags no command has"
    # the benchmark flags it names are the benchmarks' own
    bench = (ROOT / "benchmarks" / "serve_bench.py").read_text()
    assert all(f'"{flag}"' in bench for flag in ("--seconds", "--soak", "--loadgen"))


def test_every_benchmark_figure_the_readme_names_is_one_the_benchmark_reports() -> None:
    """The Benchmarks section names the JSON keys of ``serve_bench.py --workers``'s figures: each is a key the
    benchmark writes (a quoted string in serve_workers.py or serve_bench.py)."""
    named = set(re.findall(r"`([a-z0-9]+(?:_[a-z0-9]+){2,})`", section("## Benchmarks")))
    code = (ROOT / "benchmarks" / "serve_workers.py").read_text() + (ROOT / "benchmarks" / "serve_bench.py").read_text()
    assert named, "the Benchmarks section names no benchmark figure"
    assert {name for name in named if f'"{name}"' not in code} == set()


# Each troubleshooting row, and the literal part of its message that the code must contain.
TROUBLESHOOTING = {
    "bnfold-train: error: run directory ... already holds checkpoints": "already holds checkpoints",
    "the loss became non-finite at step N": "the loss became non-finite at step",
    "bnfold-export: error: ... track_running_stats=False: it always normalises ...": (
        "track_running_stats=False: it always normalises"
    ),
    "bnfold-export: error: ... cannot rebuild the checkpoint's dataset": "cannot rebuild the checkpoint's dataset",
    "verification failed, nothing written": "verification failed, nothing written",
    "model repository ... holds no model": "holds no model",
    "input 'input': shape [...], expected [-1, 1, 8, 8]": "shape {list(tensor.shape)}, expected {expected}",
    "... exceeds the limit of N bytes (BNFOLD_MAX_BODY_BYTES)": "exceeds the limit of",
    "x.png is not a PNG or JPEG image": "",  # built from the accepted formats: see GENERATED
    "internal server error (request id ...)": "internal server error (request id",
    "queue is full": "queue is full",
    "execution provider: CPU (CUDA is not usable on this machine)": "execution provider: CPU (CUDA is not usable",
}


# Rows whose message is rendered by the code in a test of its own (the fragment is then the format string).
RENDERED = {"input 'input': shape [...], expected [-1, 1, 8, 8]"}


def _unreadable_upload() -> str:
    from contracts.images import ImageError, ImageSpec, preprocess
    from contracts.preprocessing import Preprocessing

    with pytest.raises(ImageError) as info:
        preprocess(
            b"GIF89a", ImageSpec(1, 8, 8), name="x.png", formats=Preprocessing().formats
        )  # a model with no recorded recipe
    return str(info.value)


# Rows whose message the code builds from parts: the test makes the code write it.
GENERATED = {"x.png is not a PNG or JPEG image": _unreadable_upload}


def _source() -> str:
    packages = ("contracts", "training", "export", "service")
    return "\n".join(p.read_text() for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("message", list(TROUBLESHOOTING))
def test_each_troubleshooting_message_is_one_the_code_prints(message: str) -> None:
    if message in GENERATED:
        assert GENERATED[message]() == message
        return
    fragment = TROUBLESHOOTING[message]
    assert fragment in _source(), f"{fragment!r} is not in the code"
    if message not in RENDERED:  # those are compared with the message the code really sends, below
        assert fragment in message


def test_the_shape_row_is_the_message_the_service_sends() -> None:
    """The row as a pattern ("[...]" stands for any shape) against the real message, not a fragment of it."""
    import json
    from types import SimpleNamespace

    from service.errors import ApiError
    from service.model import TensorInfo
    from service.pipeline import validate_input
    from service.protocol import decode_request

    row = "input 'input': shape [...], expected [-1, 1, 8, 8]"
    model = SimpleNamespace(name="digits", inputs=(TensorInfo("input", "FP32", (1, 8, 8)),))
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    with pytest.raises(ApiError) as refused:
        validate_input(decode_request(json.dumps(body).encode(), None), model, False)  # type: ignore[arg-type]
    pattern = re.escape(row).replace(re.escape("[...]"), r"\[[-\d, ]*\]")
    assert re.match(pattern, refused.value.message), refused.value.message


def test_the_troubleshooting_table_is_exactly_the_checked_messages() -> None:
    rows = [re.search(r"`([^`]*)`", cells[0]) for cells in table(section("## Troubleshooting"))]
    assert [m.group(1) for m in rows if m] == list(TROUBLESHOOTING)


def test_the_two_commands_and_the_python_floor_are_stated() -> None:
    assert "make demo" in section("## The two commands") and "make test" in section("## The two commands")
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'requires-python = ">=(\d+\.\d+)"', pyproject)
    assert floor and f"Python {floor.group(1)}+" in README


def test_compose_variables_are_documented() -> None:
    compose = (ROOT / "docker-compose.yml").read_text() + (ROOT / "docker-compose.gpu.yml").read_text()
    for var in set(re.findall(r"\$\{(\w+)", compose)):
        assert f"`{var}`" in README, f"{var} (docker-compose) is missing from the README"
