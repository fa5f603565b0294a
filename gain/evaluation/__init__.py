"""The floor under cam/, seeds/ and sec/: metrics (the confusion matrix, mAP), figures and the offline `dvc plots` template."""
