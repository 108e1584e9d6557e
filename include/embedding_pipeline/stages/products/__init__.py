"""The product-link stage: ``stage`` (its task functions), ``linker`` (search -> documents),
``documents``, ``options``, ``fusion`` (hybrid ranking), ``maintenance`` (which stored lists a
keyword change can alter), ``quality`` and ``relevance`` (measuring links), ``checks`` (what its
generations must show beyond the generic gate)."""
