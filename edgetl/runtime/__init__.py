"""Device side: run a bundle without torch. One runner shape for every backend (``base``),
ONNX Runtime (``onnxrt``), TensorRT (``tensorrt``, the only module that imports tensorrt and
cuda-python, lazily), the PyTorch checkpoint runner (``torch_runner``, torch imported lazily) and
the image ``classifier`` that picks one. Python 3.8; imports ``edgetl.contracts`` and below."""
