"""Serving: the one client of the inference server (tritonclient, KServe v2), client-side
tokenization, and the local v2 server that stands in for Triton on one machine."""
