"""One thin entry point per DVC stage (same name as the stage in dvc.yaml); the work lives in gain/."""
