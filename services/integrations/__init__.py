"""integrations: brings each revision's models and data (git-lfs clones, s3 syncs) to this machine
before its replicas start, caches them by content identity, and publishes IntegrationsReady or
IntegrationsFailed. `python -m services.integrations`."""
