"""alerting: evaluates each deployment's alerting rules (spec `alerts`) as Prometheus evaluates alerting
rules, publishes every transition as AlertChanged on BERTH_ALERTS, and delivers firing and resolved
alerts to the project's webhooks (signed, retried until they answer 2xx). `python -m services.alerting`."""
