"""On-device models served with onnxruntime."""
