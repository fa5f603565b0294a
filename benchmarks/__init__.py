"""Speed and memory benchmarks of the pipeline's hot paths (`python -m benchmarks.run`)."""
