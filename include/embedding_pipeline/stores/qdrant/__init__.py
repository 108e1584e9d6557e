"""Qdrant: settings, client, collections by alias, upserts, search and scans.

Two modes behind one ``qdrant_client.QdrantClient`` surface:

* **Local (embedded) mode**, the default: ``<work_dir()>/qdrant`` on disk. The storage folder is
  locked by ONE process at a time (qdrant-client takes an exclusive file lock), so every task that
  opens it - upserts and the linker's searches alike - must be serialised: the DAGs run them one
  at a time when ``QdrantSettings.is_local``. A second process gets ``QdrantLockedError`` instead
  of qdrant-client's raw ``RuntimeError``. Local mode persists each point with its own SQLite
  commit (a few hundred points/s on disk here, far less when the disk is busy; ~10k/s in memory):
  a Qdrant server removes that cost, and nothing else in this package changes.
* **Server mode**: ``url`` or ``host`` (+ ``prefer_grpc`` for gRPC); parallel writers are fine.

Readers address collections by **alias** (``keywords``); the physical collection carries a
generation suffix (``keywords-g1``) so a full reindex can build ``-g2`` and swap the alias
atomically. qdrant-client's local mode implements aliases and collection ``metadata``, so both
modes use the same code path. The model a collection was built with (name, version, dim) lives in
that metadata; a chunk embedded with another model is refused before anything is written.

Modules: ``settings`` (light), ``errors`` (error types and how to classify client exceptions),
``client``, ``collections``, ``upsert``, ``search`` (k-NN queries and full scans).
"""
