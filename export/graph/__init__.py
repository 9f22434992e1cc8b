"""ONNX graphs as files: load, check and save (external data included), count ops, metadata, inputs and outputs."""
