"""Conversion between Hugging Face checkpoints and momentor_jax parameters (`python -m momentor_jax.convert`).

hf.py maps weights and configs; commands.py implements import_hf / export_hf / check_logits. Only these modules
import torch / transformers, and only inside functions.
"""
