"""What each pipeline stage does: ``embed`` (shared by every entity), ``keywords/`` (the keyword
index) and ``products/`` (product -> keyword links and their quality). Stages are specific; the
stores they write through and the generations lifecycle are generic."""
