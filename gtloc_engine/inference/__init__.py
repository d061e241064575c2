"""Inference: posteriors over place and time galleries."""
