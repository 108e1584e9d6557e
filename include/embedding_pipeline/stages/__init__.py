"""What each pipeline stage does: embed a chunk, index keywords, link products to keywords, and
measure link quality. Stages are specific; the stores they write through are generic."""
