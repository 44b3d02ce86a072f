"""Packaging for the dCMMS telemetry pipeline.

Direct dependencies are pinned exactly: apache-beam must match the Java
artifacts (Flink runner, Kafka IO) that scripts/fetch-jars.sh resolves from
Maven Central, see docs/decisions/0001-beam-flink-kafka.md.
"""
from setuptools import find_packages, setup

BEAM_VERSION = "2.70.0"

setup(
    name="dcmms-telemetry",
    version="0.1.0",
    description="Real-time telemetry pipeline for renewable-energy IoT fleets",
    python_requires=">=3.11,<3.12",
    packages=find_packages(
        include=["pipelines*", "transforms*", "io_connectors*", "api*", "schemas*", "runners*",
                 "schema_registry*", "config*"]
    ),
    # config/: the settings loader (config/settings.py) and the files it and the job read.
    package_data={"schemas": ["*.avsc"], "config": ["*.toml", "*.json"]},
    install_requires=[
        f"apache-beam=={BEAM_VERSION}",
        "fastavro==1.13.1",
        # Schema registry: Apache Avro's parser enforces the specification's name and union
        # rules that fastavro lets by (schemas/compatibility.py).
        "avro==1.12.2",
        "confluent-kafka[schemaregistry]==2.16.1",  # SchemaRegistryClient, AvroSerializer
        "paho-mqtt==2.2.0",
        "questdb==6.0.0",
        "flask==3.1.3",
        "gunicorn==27.0.1",
        # PG-wire reads from QuestDB for the query API (bind parameters only).
        "psycopg2-binary==2.9.13",
        # HTTP client for the registry, QuestDB /exec and health checks.
        "requests==2.34.2",
        # Process inspection for `dcmms-telemetry status` and benchmark resources.
        "psutil==7.2.2",
        # Query API: /metrics aggregated over gunicorn workers; fast JSON for large pages.
        "prometheus-client==0.26.0",
        "orjson==3.13.0",
        # Swagger UI 5.34.0's dist files (Apache-2.0) for /api/v1/docs, served by the API
        # itself: no CDN at run time. The wrapper is MIT and needs only Flask.
        "flask-swagger-ui==5.34.0",
    ],
    extras_require={
        "gcp": [f"apache-beam[gcp]=={BEAM_VERSION}"],
        # playwright: the console's browser tests, driving Debian's chromium (no browser download).
        "dev": ["pytest==9.2.0", "hypothesis==6.170.17", "ruff==0.17.6", "playwright==1.65.2"],
        # `make bench` only: the results chart and profiles of the Python stages.
        "bench": ["matplotlib==3.11.2", "py-spy==0.4.3"],
    },
    entry_points={
        "console_scripts": [
            "dcmms-telemetry=runners.cli:main",
        ],
    },
)
