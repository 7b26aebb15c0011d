"""Kafka helpers shared by the services: record (de)serialization, clients, topics, local broker."""
