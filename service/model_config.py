"""Model configuration in Triton's own form: the ``ModelConfig`` message (gRPC ``ModelConfig``) and its JSON
(HTTP ``GET /v2/models/{m}[/versions/{v}]/config``).

The message is config.pbtxt as read (:mod:`contracts.repository`, through Triton's ``ModelConfig``) with what
the server actually serves written over it: the name, ``max_batch_size`` and the batching delay after the
``BNFOLD_*`` overrides, the tensors ONNX Runtime reports when config.pbtxt names none, the backend and the
execution provider. Its JSON is protobuf's JSON with the field names of the .proto, and 64-bit integers as
JSON numbers, as Triton writes them (protobuf's JSON writes them as strings).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2 as mc

from service.model import ModelVersion

INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def _tensors(into: Any, name: str, datatype: str, dims: tuple[int, ...]) -> None:
    tensor = into.add(name=name, dims=list(dims))
    tensor.data_type = mc.DataType.Value(f"TYPE_{datatype}")


def model_config(model: ModelVersion) -> mc.ModelConfig:
    """The configuration ``model`` is served with, as Triton's ``ModelConfig`` message."""
    config = mc.ModelConfig()
    if model.config is not None:
        config.CopyFrom(model.config)
    config.name = model.name
    config.platform = model.platform
    config.backend = "onnxruntime"
    config.max_batch_size = model.max_batch_size
    config.dynamic_batching.max_queue_delay_microseconds = model.max_queue_delay_us
    if not config.input:
        for t in model.inputs:
            _tensors(config.input, t.name, t.datatype, t.shape)
    if not config.output:
        for t in model.outputs:
            _tensors(config.output, t.name, t.datatype, t.shape)
    config.parameters["execution_provider"].string_value = model.provider
    return config


def _numbers(message: Message, doc: dict[str, Any]) -> None:
    """Turn the 64-bit integer fields of ``doc`` (protobuf's JSON of ``message``) back into numbers."""
    for field in message.DESCRIPTOR.fields:
        if field.name not in doc:
            continue
        value = getattr(message, field.name)
        if field.type in INT64_TYPES:
            doc[field.name] = [int(v) for v in value] if isinstance(doc[field.name], list) else int(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    for key, sub in value.items():
                        _numbers(sub, doc[field.name][str(key)])
                elif value_field.type in INT64_TYPES:
                    doc[field.name] = {k: int(v) for k, v in doc[field.name].items()}
            elif isinstance(doc[field.name], list):
                for sub, sub_doc in zip(value, doc[field.name], strict=True):
                    _numbers(sub, sub_doc)
            else:
                _numbers(value, doc[field.name])


def config_json(config: mc.ModelConfig) -> dict[str, Any]:
    """``config`` as Triton's HTTP API writes it."""
    doc: dict[str, Any] = json_format.MessageToDict(config, preserving_proto_field_name=True)
    _numbers(config, doc)
    return doc
