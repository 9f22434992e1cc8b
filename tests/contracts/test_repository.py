"""The repository format: config.pbtxt through Triton's ModelConfig, names and version folders by one rule."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.repository import (
    RepositoryFormatError,
    TensorSpec,
    build_config,
    check_model_name,
    max_queue_delay_us,
    model_names,
    next_version,
    parse_config,
    read_config,
    render_config,
    versions,
)

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
tensor_names = st.text(min_size=1, max_size=12)  # ONNX allows any name: quotes and backslashes included
dims = st.lists(st.integers(1, 4096), min_size=1, max_size=4).map(tuple)


@settings(max_examples=60, deadline=None)
@given(
    name=names,
    inputs=st.lists(st.builds(TensorSpec, tensor_names, st.sampled_from(["float32", "float16"]), dims), min_size=1),
    outputs=st.lists(st.builds(TensorSpec, tensor_names, st.sampled_from(["float32", "float16"]), dims), min_size=1),
    max_batch_size=st.integers(1, 2**31 - 1),
    delay=st.integers(0, 2**63 - 1),
    layout=st.sampled_from(["NCHW", "NHWC", "none"]),
)
def test_every_config_the_writer_produces_reads_back_equal(
    name: str, inputs: list[TensorSpec], outputs: list[TensorSpec], max_batch_size: int, delay: int, layout: str
) -> None:
    config = build_config(name, inputs, outputs, max_batch_size, delay, layout)
    back = parse_config(render_config(config), Path("config.pbtxt"))
    assert back == config
    assert back.name == name and back.max_batch_size == max_batch_size and max_queue_delay_us(back) == delay
    assert [(i.name, tuple(i.dims)) for i in back.input] == [(s.name, s.dims) for s in inputs]
    assert all(o.label_filename == "labels.txt" for o in back.output)


def test_config_written_by_export_reads_back_from_disk(tmp_path: Path) -> None:
    """export's one write path and the service's reader meet in the same ModelConfig message."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from export.repository.writer import write_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    model_dir, version = write_model(tmp_path / "repo", "flat", tmp_path / "m.onnx", list("abcd"), max_batch_size=7)
    written = read_config(model_dir)
    expected = build_config("flat", [TensorSpec("x", "float32", (1, 2, 2))], [TensorSpec("y", "float32", (4,))], 7, 500)
    assert written == expected
    assert read_config(model_dir / str(version)) == expected  # the version folder carries its own copy
    assert np.array_equal(written.input[0].dims, [1, 2, 2])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\nmax_batch: 3\n', 'no field named "max_batch"'),
        ('name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: "eight"\n', "max_batch_size"),
        ('name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\ndynamic_batching {\n', "4:1"),
        ('name: "m"\nplatform: "tensorrt_plan"\nmax_batch_size: 8\n', "platform 'tensorrt_plan'"),
        ('name: "m"\nplatform: "onnxruntime_onnx"\n', "max_batch_size is 0; expected at least 1"),
    ],
)
def test_malformed_config_is_an_error_naming_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.pbtxt").write_text(text)
    with pytest.raises(RepositoryFormatError) as info:
        read_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'config.pbtxt'}: ")
    assert message in str(info.value)


def test_missing_config_is_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(RepositoryFormatError, match=r"config\.pbtxt: cannot read the model configuration"):
        read_config(tmp_path)


def test_model_name_rule(tmp_path: Path) -> None:
    assert check_model_name("resnet-20.v2_fp16") == "resnet-20.v2_fp16"
    for bad in ("", ".hidden", "-x", "a/b", "a" * 129, "caf\u00e9"):
        with pytest.raises(RepositoryFormatError, match="is not allowed"):
            check_model_name(bad)
    for name in ("good", ".stage.1-x.partial", "caf\u00e9"):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.onnx").write_bytes(b"")
    assert model_names(tmp_path) == ["good"]  # the reader lists only what the writer could have named


def test_version_folders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """'01' and '0' would load as versions no request can name; '²' (a digit to str.isdigit) made int() raise;
    the writer numbers past every ASCII-numeric folder so it never writes into one of them."""
    for name in ("1", "12", "01", "0", "\u00b2", "\u0661", ".3.123-abc.partial"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.onnx").write_bytes(b"")
    (tmp_path / "40").mkdir()  # no model.onnx: not served, but its number is taken
    with caplog.at_level(logging.WARNING, logger="contracts.repository"):
        assert versions(tmp_path) == [1, 12]
    skipped = sorted(r.getMessage().split(":")[0].rsplit("/", 1)[1] for r in caplog.records)
    assert skipped == ["0", "01"]
    assert "no leading zero" in caplog.records[0].getMessage()
    caplog.clear()
    assert versions(tmp_path) == [1, 12]
    assert not caplog.records  # once per folder: the index and every load scan the repository again
    assert next_version(tmp_path) == 41
