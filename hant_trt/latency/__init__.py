"""True latencies: ONNX export, engine backends, the latency table, trtexec-like benchmarks."""
