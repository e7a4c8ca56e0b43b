"""The External Metrics API adapter: serves the optimizer's decisions to HPAs over TLS."""
