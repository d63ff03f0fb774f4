"""Protocols on top of the driver: what one round does, who computes what, and
which collective carries it."""
