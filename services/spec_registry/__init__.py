"""spec-registry: the source of truth for deployments and their spec versions (SQL), served over
REST; every accepted change reaches the bus through a transactional outbox."""
