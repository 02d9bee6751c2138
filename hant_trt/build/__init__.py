"""`build` stage: assemble the chosen student, fine-tune, verify its ONNX, build the engine with its
metadata, write the Triton repository and the report. Submodules are imported where used (this
package imports nothing, so `hant_trt.build.triton` etc. stay cheap to import)."""
