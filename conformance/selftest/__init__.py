"""Self-test of the harness mechanics (watchdog, crash restart, counting)."""
