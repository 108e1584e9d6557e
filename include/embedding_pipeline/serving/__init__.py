"""Serving: the one client of the inference server (tritonclient, KServe v2) and the local v2
server that stands in for Triton on one machine. Tokenization is the model's (``model.tokenization``):
serving depends on the model package, never the reverse."""
