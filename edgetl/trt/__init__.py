"""Device side: TensorRT engine builds. ``plan`` decides how TensorRT is called for each version
(pure, tested without TensorRT); ``build`` builds and verifies an engine from a bundle on the
device (tensorrt imported lazily). Python 3.8; imports ``edgetl.runtime.classifier`` and below."""
