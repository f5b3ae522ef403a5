"""Command-line reproductions of the NNGP paper's experiments: python -m gpytorch_nngp.experiments --help."""
from .classify import run_classification

__all__ = ["run_classification"]
