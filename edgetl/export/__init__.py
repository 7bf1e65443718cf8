"""Workstation side: a run folder -> a checked bundle. Options (``config``), the export job
(``job``), torch -> ONNX (``torch_to_onnx``), INT8 calibration and Q/DQ (``quantize``), fp16
conversion (``fp16``) and the parity/accuracy gates (``parity``). Imports ``edgetl.train.loop``,
``edgetl.trt``, ``edgetl.runtime.classifier`` and below."""
