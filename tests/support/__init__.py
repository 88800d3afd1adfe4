"""Helpers the tests share; fixtures live in tests/conftest.py, tests in test_*.py.

Where a test goes: tests/unit/<source path>/test_<module>.py for the unit tier (in-process,
on the fakes), tests/<source path>/ for the integration tier (a real server and stores),
tests/contracts/ for the cases a fake and its real store must both pass, tests/faults/ for
the fault-injection suite, tests/bench/ for `make bench`.

Every helper here, by module:

- abuse: the abuse soak's hostile traffic (each attack of issue 21), its workers, and a
  sampler of a server process's RSS, open descriptors, /metrics series and loop lag
- backups: namespace export and import through the API, and the items of a file read back
- cli: `meshgate` as a process: `run_cli` to its exit, `start_cli` kept running, `cli_env`
- clients: mTLS channel credentials, call metadata, refused calls, raw and health stubs
- cluster: several `meshgate serve` replicas on a redis-server of their own, test plans
- driver_sockets: the one unclosed-socket warning the suite drops (a MongoDB driver's)
- envoy: Envoy's ext_authz and rate-limit requests, and clients built from xds-protos
- fakes/: in-memory stores for the unit tier, each held to its real store by tests/contracts
  (the package's docstring lists them)
- faults: the traffic of the fault-injection suite and the table of what each fault did
- faulty_receiver: a webhook receiver that hangs or resets connections on purpose
- held: a real collection whose next read waits for the test (controlled interleavings)
- load: bounded load on a server, every call timed, and busy processes that saturate the cores
- log_guard: what no log line may contain, and the server logs to search
- metering: credit accounts and a usage writer wired as a server wires them
- mongo_engine: the embedded MongoDB engine as a process of its own (`python -m ...`)
- namespace_clients: one namespace's caller of the data services, and the messages they take
- nginx: nginx in front of a test server, configured by deploy/nginx/
- pki: the session's throwaway certificates
- processes: free ports, the redis-server and MongoDB engine processes, `meshgate serve`
  replicas on the session's stores (`replica_env`, `start_replica`, `wait_until_healthy`)
- redis_cluster: a Redis Cluster on loopback, and the endpoint a test runs on
- request_path: the server's own request path in-process on the fakes, a servicer context
  stand-in and `call_through` (the unit tier's whole calls)
- servers: an in-process server on backends of its own, for tests with settings of their own
- tenants: organizations with an ADMIN key, namespaces and keys made through the API, and
  bursts of GetOrganization calls
- unit_tier: the tier markers by folder and the unit tier's guard (no socket, no process)
- waiting: poll until a condition holds
- webhooks: the HTTP receiver and the two signature verifiers (specification, reference)
- wire: a gRPC call written by hand over HTTP/2, for headers a gRPC client refuses to send
"""
