"""The student: assembled from the chosen parts (`assemble`), fine-tuned (`finetune`), its int8
plan and the build stage's training side (`stage`). Submodules are imported where used."""
