"""GAIN -> SEC weakly supervised segmentation pipeline library."""
