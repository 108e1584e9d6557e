"""Elasticsearch: settings, errors, client, indices by alias, bulk-load settings, bulk indexing with
item-level accounting, document helpers and reads.

Modules: ``settings`` and ``documents`` are light (no client library); ``errors`` makes client
exceptions readable (``es_errors`` wraps every client call); ``client``, ``indices``,
``generations``, ``bulk_load``, ``bulk`` and ``read`` talk to the cluster; ``adapter`` is the
generations lifecycle's view of Elasticsearch (``stores.protocol``). The mappings and documents
of keywords and products belong to their stages.
"""
