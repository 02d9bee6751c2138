"""From a built student to deployable files: the `build` stage (`stage`), export and engine
(`deploy`), verification, engine metadata, Triton repository, report. This package imports
nothing, so `hant_trt.deploy.triton` etc. stay cheap to import."""
