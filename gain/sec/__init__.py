"""The `sec` stage: DeepLab-LargeFOV, the seed/expand/constrain losses, the dense CRF, training, scoring."""
