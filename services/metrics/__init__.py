"""The metrics history: keeps the router's request reports, the runtime's usage readings and the
status events as time series per deployment, version and replica, and answers queries on them."""
