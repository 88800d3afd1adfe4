"""The request path: one module per step, composed by `interceptors.chain`."""
