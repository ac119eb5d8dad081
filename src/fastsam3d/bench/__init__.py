"""Benchmarks: timing helpers and the encoder benchmark behind ``fastsam3d bench``."""
