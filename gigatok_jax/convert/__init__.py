"""Converters from public PyTorch weight files to gigatok_jax parameter files (see weights/)."""
