"""The only code that talks to each store. Generic on purpose: what is keyword- or product-shaped
(id fields, payload indexes, mappings, document builders) belongs to the stages, which pass it in.

``protocol`` states what the generations lifecycle needs from any store (``GenerationStore``) and
``registry`` names the adapter of each (``qdrant/adapter.py``, ``elasticsearch/adapter.py``) and
resolves their settings; a new store is a new subpackage with an adapter. Each subpackage's
``settings`` module is light (no client library) so that Airflow hooks can import it at parse
time; everything else imports its client library at the top."""
