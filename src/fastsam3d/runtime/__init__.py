"""Inference runtimes: faster ways to run an already-loaded model (the torch model stays the
numerical reference)."""
