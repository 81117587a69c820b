"""Fogline: a Kubernetes operator that carries a model from GPU training in the cloud to
ONNX Runtime inference on K3s edge nodes."""

__version__ = "0.1.0"
