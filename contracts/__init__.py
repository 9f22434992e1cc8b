"""Contracts between bnfold's stages, each defined once and shared by training/, export/ and service/.

    images      image bytes -> the float32 tensor a model takes (decode, channels, resize, /255, normalise)
    repository  the model repository's format: model names, version folders, labels, config.pbtxt

This package imports no torch (the serving image holds it beside service/) and nothing from the stages.
"""
