"""The `data` stage: the VOC 2012 reader, the synthetic set, the download, transforms and validation."""
