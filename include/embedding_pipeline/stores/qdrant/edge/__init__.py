"""The embedded Qdrant (Qdrant's own engine in this process, ``qdrant-edge-py``) behind the part of
qdrant-client's interface this package calls: ``client`` (``EdgeClient``), ``catalog``
(collections, aliases and the folder lock the engine lacks), ``translate`` (models in and out)."""
