"""Triton kernels for the paged-attention engine: each module holds a kernel, its launcher and a
plain-torch reference that reads the same layout."""
