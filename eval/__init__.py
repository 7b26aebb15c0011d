"""The quality evaluation (``make eval``): real pipeline, scripted live streams, ground truth."""
