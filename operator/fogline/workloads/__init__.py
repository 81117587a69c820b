"""The programs the operator launches in pods: the trainer, the artifact fetch step and the
inference server. They share the Python distribution but never import the controllers."""
