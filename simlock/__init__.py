"""A simulated LockWise lock that speaks to the back-end as the firmware does (MQTT over TLS, HTTPS posts)."""
