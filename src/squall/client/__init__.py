"""The client: ``Executor`` and its futures, over an I/O-free core and a threaded driver."""
