"""Torch-free contracts shared by both sides: the backbone registry's facts (``backbones``), the
one preprocessing spec (``preprocess``), the formats table (``formats``), the bundle manifest
(``bundle``) and the TensorRT engine sidecar (``engine_sidecar``). Device side: Python 3.8, no
torch/onnxruntime at import. Imports only ``edgetl.core`` and ``edgetl.errors``."""
