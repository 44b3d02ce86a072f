"""The project's compact Confluent-compatible schema registry (Avro).

* :mod:`schema_registry.store` — durable state: a compacted Kafka topic replayed at start.
* :mod:`schema_registry.service` — the operations and Confluent's error codes.
* :mod:`schema_registry.app` — the REST API (Flask), served by ``runners/registry_server.py``.

Why the project has its own registry and what it implements:
docs/decisions/0002-schema-registry.md.
"""
