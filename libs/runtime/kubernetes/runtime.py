"""The `kubernetes` runtime: workloads as Deployments, replicas as Pods (docs/kubernetes.md).

The official `kubernetes` client is synchronous; every call runs in a worker thread
(`asyncio.to_thread`) and the Pod watch in a daemon thread of its own, so the scheduler's event loop
never blocks on the API server. Objects are read as plain JSON (`_preload_content=False`): the pure
functions of resources.py and pods.py work on the same dicts the API serves.

- apply: server-side apply (field manager `berth`) of the Secret and the Deployment, each only when
  what berth renders differs from what is there (the `berth.dev/applied` digest; the Secret's data);
  a change of replicas alone goes through the Deployment's scale subresource. A resync with nothing
  changed makes no write.
- delete: foreground propagation (the Deployment goes when its Pods are gone), then the Secret.
- replicas: the workload's Pods; the Pod IP is the host. restart deletes the Pod (its ReplicaSet makes
  a new one, under a new name).
- the watch: list Pods, then watch from the list's resourceVersion; a 410 Gone (the version is too
  old) lists again; errors reconnect with a bounded back-off. Each change becomes the replica events
  (`on_replica_event`) that trigger the scheduler's level-triggered reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from datetime import UTC, datetime
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity
from kubernetes.watch.watch import iter_resp_lines

from libs.logging import get_logger
from libs.runtime.base import Replica, ReplicaEventHook, ReplicaNotFound, RetainedLog, Usage, Workload
from libs.runtime.kubernetes import resources as r
from libs.runtime.kubernetes.machines import DEFAULT_MACHINE_TYPES, MachineTable
from libs.runtime.kubernetes.pods import replica_of, transitions

log = get_logger(__name__)
T = TypeVar("T")

FIELD_MANAGER = "berth"
APPLY = "application/apply-patch+yaml"
MANAGED = f"{r.MANAGED_BY_LABEL}={r.MANAGED_BY}"
GONE = 410
NOT_FOUND = 404
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
LEAVING_COST = "-1000"


def _json(response: Any) -> Any:
    return json.loads(response.data)


def _labelled(obj: dict[str, Any], wanted: dict[str, str]) -> bool:
    # The API filters by label selector; checking again keeps a foreign object out whatever serves it.
    labels = obj["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def connect(kubeconfig: Path | None = None, context: str | None = None) -> client.ApiClient:
    """The kubeconfig when given; else the in-cluster service account; else ~/.kube/config."""
    if kubeconfig is not None:
        return config.new_client_from_config(config_file=str(kubeconfig), context=context)
    try:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    except config.ConfigException:
        return config.new_client_from_config(context=context)


class KubernetesRuntime:
    def __init__(
        self,
        namespace: str,
        *,
        kubeconfig: Path | None = None,
        context: str | None = None,
        machines: MachineTable | None = None,
        watch_seconds: int = 300,
        max_backoff_seconds: float = 30.0,
        fetch_image: str | None = None,
    ) -> None:
        self.on_replica_event: ReplicaEventHook | None = None
        self.fetches_integrations = True  # an init container per Pod (resources.init_container)
        self.fetch_image = fetch_image or r.DEFAULT_FETCH_IMAGE
        self.namespace = namespace
        self.machines = machines if machines is not None else dict(DEFAULT_MACHINE_TYPES)
        self._kubeconfig, self._context = kubeconfig, context
        self._watch_seconds, self._max_backoff = watch_seconds, max_backoff_seconds
        self._api: client.ApiClient | None = None
        self._spec_ids: dict[str, str] = {}  # workload -> spec_id (the Deployment's annotation)
        self._seen: dict[str, Replica] = {}  # Pod name -> last observation, for transitions
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stopping = threading.Event()
        self._watch_response: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics_missing_logged = False

    # -- connection ------------------------------------------------------------------------------

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self._api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self._api)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def start(self) -> None:
        self._api = await asyncio.to_thread(connect, self._kubeconfig, self._context)
        for w in await self.workloads():  # adopt: what exists is what runs
            self._spec_ids[w.name] = w.spec_id
        self._seen = {rep.replica_id: rep for rep in await self.replicas()}
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._watch_pods, args=(loop,), name="berth-pod-watch", daemon=True).start()
        self._tasks.append(asyncio.create_task(self._dispatch(), name="berth-pod-events"))

    async def close(self, stop_replicas: bool = False) -> None:
        if stop_replicas and self._api is not None:
            for w in await self.workloads():
                await self.delete(w.name)
        self._stopping.set()
        if (response := self._watch_response) is not None:
            with contextlib.suppress(Exception):
                response.shutdown()  # unblocks the watch thread's read (urllib3 >= 2.3)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._api is not None:
            await asyncio.to_thread(self._api.close)

    # -- workloads -------------------------------------------------------------------------------

    def not_provided(self, workload: Workload) -> list[str]:
        return [
            f"machineType {name} is not in the machine type table (docs/kubernetes.md)"
            for name in r.unknown_machine_types(workload, self.machines)
        ]

    async def apply(self, workload: Workload) -> None:
        if (secret := r.secret(workload, self.namespace)) is not None:
            current = await self._read(self.core.read_namespaced_secret, workload.name)
            if current is None or current.get("data") != secret["data"]:
                await self._call(self._apply, self.core.patch_namespaced_secret, secret)
        desired = r.deployment(workload, self.namespace, self.machines, self.fetch_image)
        current = await self._read(self.apps.read_namespaced_deployment, workload.name)
        digest = r.APPLIED_ANNOTATION
        if current is not None and workload.replicas < current["spec"].get("replicas", 0):
            await self._mark_leaving(workload.name, workload.replicas)
        if current is None or current["metadata"].get("annotations", {}).get(digest) != desired["metadata"][
            "annotations"
        ][digest]:
            await self._call(self._apply, self.apps.patch_namespaced_deployment, desired)
        elif current["spec"].get("replicas") != workload.replicas:
            await self._patch_scale(workload.name, workload.replicas)
        self._spec_ids[workload.name] = workload.spec_id

    async def scale(self, name: str, replicas: int) -> None:
        """Through the scale subresource: the Pod template stays what `apply` made it."""
        current = await self._read(self.apps.read_namespaced_deployment, name)
        if current is None or current["spec"].get("replicas") == replicas:
            return
        if replicas < current["spec"].get("replicas", 0):
            await self._mark_leaving(name, replicas)
        try:
            await self._patch_scale(name, replicas)
        except ApiException as exc:
            if exc.status != NOT_FOUND:  # deleted meanwhile: nothing to scale
                raise

    async def _patch_scale(self, name: str, replicas: int) -> None:
        await self._call(
            self.apps.patch_namespaced_deployment_scale,
            name,
            self.namespace,
            {"spec": {"replicas": replicas}},
            _preload_content=False,
        )

    async def _mark_leaving(self, name: str, replicas: int) -> None:
        """Before a scale down: the newest Pods go first, as the scheduler expects (it has taken them
        out of traffic). The ReplicaSet deletes Pods of lower `pod-deletion-cost` first, among Pods of
        equal readiness (a not-ready Pod still goes before a ready one)."""
        alive = [rep for rep in await self.replicas(name) if rep.state != "stopping"]
        newest_first = sorted(alive, key=lambda rep: rep.created_at or datetime.min.replace(tzinfo=UTC), reverse=True)
        for rep in newest_first[: max(len(alive) - replicas, 0)]:
            body = {"metadata": {"annotations": {DELETION_COST: LEAVING_COST}}}
            with contextlib.suppress(ReplicaNotFound):  # gone already: nothing to order
                await self._pod_call(self.core.patch_namespaced_pod, rep.replica_id, body=body)

    def _apply(self, patch: Callable[..., Any], manifest: dict[str, Any]) -> None:
        patch(
            manifest["metadata"]["name"],
            self.namespace,
            manifest,
            field_manager=FIELD_MANAGER,
            force=True,  # berth owns these objects: take over fields another manager changed
            _content_type=APPLY,
            _preload_content=False,
        )

    async def _read(self, read: Callable[..., Any], name: str) -> dict[str, Any] | None:
        try:
            return _json(await self._call(read, name, self.namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == NOT_FOUND:
                return None
            raise

    async def delete(self, name: str) -> None:
        body = client.V1DeleteOptions(propagation_policy="Foreground")
        for remove in (self.apps.delete_namespaced_deployment, self.core.delete_namespaced_secret):
            try:
                await self._call(remove, name, self.namespace, body=body, _preload_content=False)
            except ApiException as exc:
                if exc.status != NOT_FOUND:  # already gone (or never had a Secret) is done
                    raise
        self._spec_ids.pop(name, None)

    async def workloads(self) -> list[Workload]:
        listed = _json(
            await self._call(
                self.apps.list_namespaced_deployment, self.namespace, label_selector=MANAGED, _preload_content=False
            )
        )
        found = [self._workload_of(d) for d in listed["items"] if _labelled(d, {r.MANAGED_BY_LABEL: r.MANAGED_BY})]
        return [w for w in found if w is not None]

    def _workload_of(self, dep: dict[str, Any]) -> Workload | None:
        """The workload a Deployment runs, as far as it can be read back: for observing only. Secret
        values, probes, resources and integrations are not read back, so this is never applied again
        (the scheduler renders a revision from its spec; a count alone goes through `scale`)."""
        meta, spec = dep["metadata"], dep.get("spec", {})
        labels = meta.get("labels") or {}
        if r.WORKLOAD_LABEL not in labels:
            return None
        pod = spec.get("template", {}).get("spec", {})
        c = (pod.get("containers") or [{}])[0]
        env = c.get("env") or []
        spec_id = (meta.get("annotations") or {}).get(r.SPEC_ID_ANNOTATION, "")
        self._spec_ids[meta["name"]] = spec_id
        return Workload(
            name=meta["name"],
            deployment_id=labels.get(r.DEPLOYMENT_ID_LABEL, ""),
            project=labels.get(r.PROJECT_LABEL, ""),
            slug=labels.get(r.SLUG_LABEL, ""),
            spec_id=spec_id,
            replicas=spec.get("replicas", 0),
            command=tuple(c.get("command") or ()),
            image=c.get("image", ""),
            env={e["name"]: e.get("value", "") for e in env},
            ports=tuple(p["containerPort"] for p in c.get("ports") or []),
            labels={r.REVISION_LABEL: labels.get(r.REVISION_LABEL, "")},
            revision_id=labels.get(r.REVISION_LABEL, ""),
            secret_env=frozenset(e["name"] for e in env if "valueFrom" in e),
            container_registry=((pod.get("imagePullSecrets") or [{}])[0]).get("name"),
        )

    # -- replicas --------------------------------------------------------------------------------

    async def _pods(self, workload: str | None = None) -> list[dict[str, Any]]:
        wanted = {r.WORKLOAD_LABEL: workload} if workload else {r.MANAGED_BY_LABEL: r.MANAGED_BY}
        selector = ",".join(f"{k}={v}" for k, v in wanted.items())
        listed = _json(
            await self._call(
                self.core.list_namespaced_pod, self.namespace, label_selector=selector, _preload_content=False
            )
        )
        return [p for p in listed["items"] if _labelled(p, wanted)]

    def _replica(self, pod: dict[str, Any]) -> Replica | None:
        labels = pod["metadata"].get("labels") or {}
        return replica_of(pod, self._spec_ids.get(labels.get(r.WORKLOAD_LABEL, ""), ""))

    async def replicas(self, name: str | None = None) -> list[Replica]:
        return [rep for pod in await self._pods(name) if (rep := self._replica(pod)) is not None]

    async def _pod_call(self, fn: Callable[..., T], replica_id: str, **kwargs: Any) -> T:
        """A call about one Pod; a Pod that is not there is ReplicaNotFound."""
        try:
            return await self._call(fn, replica_id, self.namespace, _preload_content=False, **kwargs)
        except ApiException as exc:
            if exc.status == NOT_FOUND:
                raise ReplicaNotFound(replica_id) from None
            raise

    async def restart(self, replica_id: str) -> None:
        await self._pod_call(self.core.delete_namespaced_pod, replica_id)

    async def logs(self, replica_id: str, tail: int = 100, timestamps: bool = False) -> list[str]:
        response = await self._pod_call(
            self.core.read_namespaced_pod_log, replica_id, container=r.CONTAINER_NAME, tail_lines=tail,
            timestamps=timestamps,
        )  # fmt: skip
        return response.data.decode(errors="replace").splitlines()[-tail:] if tail else []

    async def retained_logs(self, deployment_id: str) -> list[RetainedLog]:
        """None: a deleted Pod's logs go with it (the kubelet keeps the current container's and the
        previous one's only while the Pod exists); keep them longer with the cluster's log collector."""
        return []

    async def follow_logs(self, replica_id: str) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        response = await self._pod_call(
            self.core.read_namespaced_pod_log, replica_id, container=r.CONTAINER_NAME, follow=True, tail_lines=0
        )

        def pump() -> None:
            try:
                for line in iter_resp_lines(response):
                    loop.call_soon_threadsafe(lines.put_nowait, line)
            except Exception:  # the stream closed: the caller went away or the Pod ended
                pass
            finally:
                loop.call_soon_threadsafe(lines.put_nowait, None)

        threading.Thread(target=pump, name=f"berth-logs-{replica_id}", daemon=True).start()
        try:
            while (line := await lines.get()) is not None:
                yield line
        finally:
            response.close()

    async def usage(self, replica_id: str) -> Usage | None:
        """From metrics.k8s.io (metrics-server); None, with one log line, when the cluster lacks it."""
        custom = client.CustomObjectsApi(self._api)
        try:
            metrics = await self._call(
                custom.get_namespaced_custom_object, "metrics.k8s.io", "v1beta1", self.namespace, "pods", replica_id
            )
            pod = await self._read(self.core.read_namespaced_pod, replica_id)
        except ApiException as exc:
            if exc.status == NOT_FOUND and not self._metrics_missing_logged:
                self._metrics_missing_logged = True
                log.warning("usage unavailable: metrics.k8s.io does not serve this Pod (is metrics-server installed?)")
            return None
        if pod is None:
            return None
        used = next((c["usage"] for c in metrics.get("containers", []) if c["name"] == r.CONTAINER_NAME), None)
        requested = (pod["spec"]["containers"][0].get("resources") or {}).get("requests") or {}
        if used is None:
            return None
        cpu, memory = float(parse_quantity(used["cpu"])), int(parse_quantity(used["memory"]))
        cpu_of = float(parse_quantity(requested["cpu"])) if "cpu" in requested else 1.0
        memory_of = float(parse_quantity(requested["memory"])) if "memory" in requested else None
        return Usage(
            cpu_percent=100.0 * cpu / cpu_of,
            memory_percent=100.0 * memory / memory_of if memory_of else 0.0,
            memory_bytes=memory,
        )

    # -- the watch -------------------------------------------------------------------------------

    def _watch_pods(self, loop: asyncio.AbstractEventLoop) -> None:
        """List, then watch from the list's resourceVersion; 410 Gone lists again (thread)."""
        post = lambda item: loop.call_soon_threadsafe(self._events.put_nowait, item)  # noqa: E731
        backoff = 0.0
        while not self._stopping.is_set():
            try:
                listed = _json(
                    self.core.list_namespaced_pod(self.namespace, label_selector=MANAGED, _preload_content=False)
                )
                post(("relist", listed["items"]))
                version = listed["metadata"].get("resourceVersion")
                while not self._stopping.is_set():
                    version = self._watch_once(version, post)
                    backoff = 0.0
                    if version is None:  # 410 Gone: our version is too old to watch from
                        break
            except Exception as exc:  # the API went away: reconnect, waiting longer each time
                if self._stopping.is_set():
                    return
                backoff = min(max(backoff * 2, 0.5), self._max_backoff)
                log.warning("kubernetes pod watch failed; retrying", error=type(exc).__name__, delay=backoff)
                self._stopping.wait(backoff)

    def _watch_once(self, version: str | None, post: Callable[[tuple[str, Any]], Any]) -> str | None:
        """One watch request from `version`; the version to continue from, or None after 410 Gone."""
        response = self.core.list_namespaced_pod(
            self.namespace,
            label_selector=MANAGED,
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=version,
            timeout_seconds=self._watch_seconds,
            _preload_content=False,
            _request_timeout=(10, self._watch_seconds + 10),
        )
        self._watch_response = response
        try:
            for line in iter_resp_lines(response):
                if self._stopping.is_set():
                    break
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == GONE:
                        return None
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if event.get("type") != "BOOKMARK":
                    post((event["type"], obj))
        finally:
            self._watch_response = None
            response.close()
            response.release_conn()
        return version

    async def _dispatch(self) -> None:
        """Turn Pod changes into replica events, in the order the watch saw them (event loop)."""
        while True:
            kind, payload = await self._events.get()
            try:
                await self._dispatch_one(kind, payload)
            except Exception:  # a malformed object or a failing hook must not end the consumer
                log.exception("pod event not handled", kind=kind)

    async def _dispatch_one(self, kind: str, payload: Any) -> None:
        if kind == "relist":
            now = {rep.replica_id: rep for pod in payload if (rep := self._replica(pod)) is not None}
            changes = [(self._seen.get(n), now.get(n)) for n in self._seen.keys() | now.keys()]
            self._seen = now
        else:
            rep = self._replica(payload)
            if rep is None:
                return
            before, after = self._seen.get(rep.replica_id), None if kind == "DELETED" else rep
            if after is None:
                self._seen.pop(rep.replica_id, None)
            else:
                self._seen[rep.replica_id] = after
            changes = [(before, after)]
        for before, after in changes:
            for event_kind, replica, code in transitions(before, after):
                if self.on_replica_event is not None:
                    await self.on_replica_event(event_kind, replica, code)
