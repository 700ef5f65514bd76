"""energy-ood: energy-based out-of-distribution detection (Liu et al., NeurIPS 2020) as an experiment runner."""

__version__ = "0.1.0"
