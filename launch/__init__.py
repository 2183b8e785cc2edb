"""Command-line launchers: Cloud TPU VM lifecycle (tpu.py) and config sweeps (sweep.py)."""
