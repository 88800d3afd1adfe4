"""Helpers the tests share; fixtures live in tests/conftest.py, tests in test_*.py.

- processes: free ports, the redis-server the suite starts, `meshgate serve` replicas
- redis_cluster: a Redis Cluster on loopback (and the endpoint a test runs on: single or cluster)
- pki: the throwaway certificates of a test session
- clients: channel credentials, call metadata, catching a refused call
- tenants: organizations with an ADMIN key, and what they create through the API
- namespace_clients: one namespace's caller of the document, vector, task and webhook services
- webhooks: the HTTP receiver and the two signature verifiers (specification, reference)
- wire: a gRPC call written by hand over HTTP/2, for headers a gRPC client refuses to send
- waiting: poll until a condition holds
- held: a real collection whose next read waits for the test (controlled interleavings)
- log_guard: what no log line may contain, and the server logs to search
- load: workers that time every call, and busy processes that saturate the cores
"""
