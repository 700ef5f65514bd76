"""Configuration plumbing below Hydra: where the configs live, and reading override strings."""
