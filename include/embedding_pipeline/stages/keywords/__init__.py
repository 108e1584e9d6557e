"""The keyword-index stage: ``stage`` (its task functions), ``documents`` (what a keyword is in
each store), ``checks`` (what its generations must show beyond the generic gate)."""
