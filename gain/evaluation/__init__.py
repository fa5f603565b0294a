"""The `evaluate` stage and comparisons: metrics, figures, the report and the MLflow run comparison."""
