"""The blue/green lifecycle of any set of stores, entity-free: number and create the next
generation, gate it (generic checks plus the checks a stage hands in), move every alias together,
keep the last few, roll back, and check that the stores agree on the ids a run wrote.

It reaches stores only through :mod:`embedding_pipeline.stores.protocol`: a new store is a new
adapter, never an edit here."""
