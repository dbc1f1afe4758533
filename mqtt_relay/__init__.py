"""The always-on MQTT relay: delivers the commands outbox to locks and hands lock events to the devices function."""
