"""The trainer workload: the program a ModelTraining's Job runs. It trains a model, exports and
compresses it, evaluates it and writes an artifact folder; it never talks to the operator
except through its termination message and a progress annotation on its own pod."""
