"""Selection (phase 2): an integer program picks one candidate per slot under a latency budget.
Works on tables only: imports neither torch nor onnx."""
