"""The method study: Grad-CAM vs GAIN vs GAIN_ext over seeds, SEC loss ablation, diagnostics."""
