"""Post-training: mixtures of the instruction set, collation with loss masks, the Ray Train + DeepSpeed loop, export."""
