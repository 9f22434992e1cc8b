"""Sources: each turns what the user has into one ``ExportJob``.

A bnfold checkpoint (``checkpoint``), a PyTorch factory with weights (``torch_factory``), an ONNX file
(``onnx_file``); ``images`` reads the user's image folders for any of them.
"""
