"""Variants: the reduced-precision forms of a verified float32 graph, fp16 and int8, each with its own gate."""
