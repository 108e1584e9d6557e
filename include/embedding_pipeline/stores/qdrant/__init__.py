"""Qdrant: settings, client, collections by alias, upserts, search and scans.

Three ways to reach Qdrant behind one client surface (qdrant-client's ``QdrantBase`` calls):

* **Embedded, the default**: Qdrant's own engine in this process (``qdrant-edge``, ``edge``),
  ``<work_dir()>/qdrant`` on disk, with collections, aliases and metadata added by a catalog file.
  Chosen by measurement over qdrant-client's local mode (``bench/bench_qdrant_engines.py``): its
  upserts run 10.7x faster, it opens a 40k-point store in 0.45 s (5.0 s) and filters in the
  engine (5.9 ms vs 699 ms for the linker's filtered top-30).
* **qdrant-client's local mode** (``QDRANT_LOCAL_ENGINE=python``): a Python re-implementation,
  kept because it stands in for a server in the tests (the same client calls, none of our
  engine code) and reads stores written before the switch.
* **Server mode**: ``url`` or ``host`` (+ ``prefer_grpc`` for gRPC); parallel writers are fine.

Both embedded engines lock the storage folder for ONE process at a time, so every task that
opens it - upserts and the linker's searches alike - is serialised: the DAGs run them one at a
time when ``QdrantSettings.is_local``. A second process gets ``QdrantLockedError``.

Readers address collections by **alias** (``keywords``); the physical collection carries a
generation suffix (``keywords-g1``) so a full reindex can build ``-g2`` and swap the alias
atomically. Every way above implements aliases and collection ``metadata``, so all use the same
code path. The model a collection was built with (name, version, dim) lives in
that metadata; a chunk embedded with another model is refused before anything is written.

Modules: ``settings`` (light), ``errors`` (error types and how to classify client exceptions),
``client``, ``edge/`` (the embedded engine: client, catalog, model translation), ``collections``,
``generations``, ``points``, ``upsert``, ``search`` (k-NN queries and full scans), ``adapter``
(the generations lifecycle's view of Qdrant, ``stores.protocol``).
"""
