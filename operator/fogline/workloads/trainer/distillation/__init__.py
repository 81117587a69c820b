"""Knowledge distillation: a student trained on a teacher's softened outputs as well as the
labels. The teacher is another training's ONNX artifact, verified against its digest; its
logits for the training rows are computed once with ONNX Runtime before training starts."""
