"""Per-call state and method policies: what the request path and the servicers share.

`calls.state` holds the state of one call (who is calling, in which namespace, what
the steps decided), passed inward through a contextvar; `calls.policy` the policy a
method declares in the protos. The interceptors fill the state; the servicers read it.
Neither imports the other: both stand on this package.
"""
