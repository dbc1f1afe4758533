"""Broker configuration templates (Mosquitto, NanoMQ) and their renderer."""
