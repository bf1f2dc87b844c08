"""Runtime adapters. `make_runtime` picks one from settings."""

from __future__ import annotations

from libs.config import Settings
from libs.runtime.base import Replica, Runtime, Usage, Workload

__all__ = ["Replica", "Runtime", "Usage", "Workload", "make_runtime"]


def make_runtime(settings: Settings) -> Runtime:
    if settings.runtime == "local":
        from libs.runtime.local import LocalRuntime

        return LocalRuntime(
            settings.data_dir / "replicas",
            grace_seconds=settings.stop_grace_seconds,
            logs_retention_seconds=settings.logs_retention_seconds,
            logs_retained_max_bytes=settings.logs_retained_max_bytes,
        )
    from libs.runtime.kubernetes.machines import load_machine_types
    from libs.runtime.kubernetes.runtime import KubernetesRuntime

    return KubernetesRuntime(
        settings.kubernetes_namespace,
        kubeconfig=settings.kubeconfig,
        context=settings.kubernetes_context,
        machines=load_machine_types(settings.kubernetes_machine_types),
        fetch_image=settings.kubernetes_integrations_image,
    )
