"""autoscaler: decides replica counts of deployments with `resources.autoscaling.enabled`, with the
Kubernetes HPA's algorithm (libs/autoscaling/hpa.py), from the router's request metrics and the
scheduler's replica usage; publishes each decision as DeploymentScaled(source="autoscaler").
`python -m services.autoscaler`."""
