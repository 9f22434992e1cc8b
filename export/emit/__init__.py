"""Emission: a job's model (torch module or ONNX graph) -> a folded ONNX file, checked and verified against float64."""
