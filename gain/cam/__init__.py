"""The `gain` stage: the GAIN classifier, Grad-CAM attention, its losses, training and evaluation."""
