"""Elasticsearch: settings, errors, client, indices by alias, bulk-load settings, bulk indexing with
item-level accounting, document helpers and reads.

Modules: ``settings`` and ``documents`` are light (no client library); ``errors`` makes client
exceptions readable; ``client``, ``indices``, ``bulk_load``, ``bulk`` and ``read`` talk to the
cluster. The mappings and documents of keywords and products belong to their stages.
"""
