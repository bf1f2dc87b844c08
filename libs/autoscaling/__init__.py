"""The Horizontal Pod Autoscaler's decision, as Kubernetes implements it (autoscaling/v2), pure."""
