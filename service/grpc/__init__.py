"""The Open Inference Protocol v2 over gRPC (Triton's ``inference.GRPCInferenceService``).

The protobuf messages and the service stub come from ``tritonclient.grpc`` (generated from Triton's published
``grpc_service.proto``; nothing here is hand-written protobuf). :mod:`service.grpc.codec` turns messages into
numpy and back, :mod:`service.grpc.servicer` answers each RPC with the same model manager, batchers and
metrics as the HTTP routes, and :mod:`service.grpc.server` runs it with ``grpc.aio`` in the HTTP server's
event loop.
"""
