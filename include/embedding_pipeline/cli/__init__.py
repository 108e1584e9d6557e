"""The ``embedding-pipeline`` command: the demo, search and quality commands, and the rest."""
