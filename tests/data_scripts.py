"""The data/ command-line tools as modules, so tests call their main() in-process."""
import importlib.util
import os

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


def load(name: str):
    """data/<name>.py as a fresh module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(DATA_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
