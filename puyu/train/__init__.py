"""Fine-tuning: recipes, LoRA/QLoRA/full training with exact resume, adapters, merge and export."""
