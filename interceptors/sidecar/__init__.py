"""Answers for the sidecars of other services: Envoy ext_authz v3 and the rate-limit service v3.

They decide with the same steps as meshgate's own request path (interceptors/*); a route
policy file (routes.py) gives other services' routes the policy the protos give ours.
"""
