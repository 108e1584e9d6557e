"""What a run is made of, whatever the stage: partitions and chunk plans, staged vectors, dead
letters, run storage (local or object storage), accounting and the run report."""
