"""Training, evaluation and prediction loops for PyTorch models."""
