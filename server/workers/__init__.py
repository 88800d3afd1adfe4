"""Background work inside the server process: ingestion tasks and webhook deliveries.

Workers claim leased rows from the shared work queue (storage/backends/work_queue.py)
and do their I/O through storage/ only.
"""
