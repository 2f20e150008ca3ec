"""Worker nodes: a supervisor (``node``) and the gevent worker processes it keeps alive."""
