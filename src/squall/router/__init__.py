"""The router: pure scheduling state (``state``) and the ZeroMQ loop around it (``server``)."""
