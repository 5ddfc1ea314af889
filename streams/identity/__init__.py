"""The worker's identity gate, registry and grant commands, and their faust wiring."""
