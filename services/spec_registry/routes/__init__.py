"""HTTP routes of the registry's REST API."""
