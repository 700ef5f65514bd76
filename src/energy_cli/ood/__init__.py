"""The OOD math, free of I/O and of models: detection scores, training losses, the margin rule, metrics."""
