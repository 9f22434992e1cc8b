"""Contracts between bnfold's stages, each defined once and shared by training/, export/ and service/.

    images      image bytes -> the float32 tensor a model takes (decode, channels, resize, /255, normalise)
    repository  the model repository's format: model names, version folders, labels, config.pbtxt
    sessions    ONNX Runtime sessions (export's verification, serving) and the CUDA probe
    errors      one-line error messages: an exception's first line, pydantic's problems

This package imports no torch (the serving image holds it beside service/) and nothing from the stages.
"""
