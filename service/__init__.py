"""bnfold's serving stage: a FastAPI + ONNX Runtime server for the model repository that export writes.

It speaks the Open Inference Protocol (KServe / Triton "v2") over REST, with Triton's binary tensor and
classification extensions, classifies uploaded images, and batches concurrent requests. It never imports
torch: the serving image carries ONNX Runtime alone.
"""
