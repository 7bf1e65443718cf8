"""TensorRT support: ``plan`` decides how TensorRT is called (pure, tested without TensorRT),
``build`` builds engines and ``runner`` runs them (the only modules that import tensorrt, lazily),
``fp16`` converts an ONNX model to float16 for strongly typed TensorRT (>= 11)."""
