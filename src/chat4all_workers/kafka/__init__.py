"""Kafka plumbing shared by every role: consumer engine, producer, circuit breaker, admin."""
