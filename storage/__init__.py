"""The only I/O in meshgate: scoped MongoDB, Redis and Qdrant access."""
