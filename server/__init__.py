"""Start-up wiring: settings, backends, the interceptor chain and the `meshgate` command."""
