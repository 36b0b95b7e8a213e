"""simo: single-input multi-output model merging and fast previews of multi-task finetuning."""
__version__ = "0.1.0"

