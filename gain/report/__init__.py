"""The wing above cam/, seeds/ and sec/: the evaluate stage's report and the MLflow comparison of pipeline runs."""
