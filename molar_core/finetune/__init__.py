"""Stage 1: fine-tuning the MLLM item encoder on mixtures built from the dataset (see encoder_training)."""
