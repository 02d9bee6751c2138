"""int8 quantization, shared by score, profile, search and build: calibration (`calibrate`), the
Q/DQ layouts (`layouts`, written by `qdq_trt` / `qdq_ort`, simulated by `fakequant` / `qdq_ort`)
and the per-part plan of a student (`parts`, `plan`)."""
