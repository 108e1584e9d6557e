"""The only code that talks to each store. Generic on purpose: what is keyword- or product-shaped
(id fields, payload indexes, mappings, document builders) belongs to the stages, which pass it in.
Each subpackage's ``settings`` module is light (no client library) so that Airflow hooks can import
it at parse time; everything else imports its client library at the top."""
