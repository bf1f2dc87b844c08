"""Prometheus metrics of the alerting service (served on its ops port)."""

from prometheus_client import Counter

EVALUATIONS = Counter("berth_alerting_evaluations_total", "Evaluation rounds of every deployment's alerting rules.")
TRANSITIONS = Counter("berth_alerting_transitions_total", "Alert transitions published, by the state entered.", ["state"])
DELIVERIES = Counter(
    "berth_alerting_webhook_deliveries_total", "Webhook POSTs of alert transitions, by outcome.", ["outcome"]
)
