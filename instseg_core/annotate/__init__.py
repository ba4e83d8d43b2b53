"""Extreme-point annotation: the network input encoding and the pipeline from four clicks to a polygon."""
