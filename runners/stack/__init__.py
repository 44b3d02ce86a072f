"""The local stack: Kafka, schema registry, QuestDB, Mosquitto, Flink job server,
Beam worker pool, MQTT bridge and REST API as supervised local processes."""
