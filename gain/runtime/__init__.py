"""Shared floor: params, the training loop, checkpoints, tracking, file I/O, paths and errors."""
