"""BN population statistics recomputed inside an ONNX graph: the paper's Algorithm 2 without torch."""
