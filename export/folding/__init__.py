"""Folding: BatchNorm folded into its neighbours.

Torch graphs (``torch_fold``) and ONNX graphs (``onnx_fold``) side by side, over one math module (``bn_math``).
"""
