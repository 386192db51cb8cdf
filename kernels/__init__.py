"""Triton kernels of sgpo (installed as ``sgpo.kernels``)."""
