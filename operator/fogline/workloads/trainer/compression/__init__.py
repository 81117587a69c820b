"""Compression of a trained model to fit an edge device: each method is a real
transformation that writes its own ONNX file (quantization, float16, weight sharing,
structured pruning), `measure` measures a file the way the edge runs it, and `selection`
picks the smallest candidate that meets the budget and the gate (pure)."""
