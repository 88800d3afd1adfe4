"""Servicers: thin conversions between protos and storage calls (one module per service)."""
