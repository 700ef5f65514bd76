"""Where and how to compute: runtime (device, precision), seeding, batched inference, the training loop, and
data-parallel training under torchrun."""
