"""What watches a run: the loggers and the TensorBoard figures."""
