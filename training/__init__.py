"""training: LoRA fine-tuning, evaluation and export of LISA on top of lisa_model."""
