"""raftctl: a cluster manager and container platform."""
__version__ = "0.1.0"
