"""A small typed client of the spec-registry's REST API (the contract in the brief / proto/openapi).

Answers are returned as the JSON the API sent (TypedDicts name their fields), so `-o json` prints
exactly what the server said. Failures raise `ApiError` (a problem+json answer) or `NotRunning`
(nothing listens at the API URL).
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any, NotRequired, TypedDict

import httpx

PAGE_LIMIT = 500  # items per request when the client reads a whole list


class ProblemField(TypedDict):
    field: str
    rule: str


class ReplicaStatus(TypedDict, total=False):
    replica_id: str
    spec_id: str
    revision_id: str
    address: str | None
    state: str
    started: bool
    ready: bool
    live: bool
    restart_count: int
    last_exit_code: int | None


class Status(TypedDict, total=False):
    phase: str
    reason: str
    desired_replicas: int
    ready_replicas: int
    replicas: list[ReplicaStatus]
    not_provided: list[str]
    observed_at: str | None
    desired_source: str  # spec, user, autoscaler or stopped
    scale_reason: NotRequired[str | None]  # the autoscaler's last reason
    integrations: list[dict[str, Any]]  # the running revision's, once fetched
    fetching: NotRequired[dict[str, Any] | None]  # integration, fetched_files, fetched_bytes while a fetch runs
    alerts: list[dict[str, Any]]  # each alerting rule: name, state, since, value


class UserScale(TypedDict):
    replicas: int
    spec_version: int
    spec_replicas: int
    scaled_at: str


class Deployment(TypedDict):
    deployment_id: str
    project: str
    name: str
    slug: str
    environment: str
    spec_id: str
    spec_version: int
    spec: dict[str, Any]
    endpoint: str
    created_at: str
    updated_at: str
    status: NotRequired[Status]
    revision_id: NotRequired[str]
    scale: NotRequired[UserScale | None]
    unchanged: NotRequired[bool]  # a write that changed nothing


class FieldChange(TypedDict):
    field: str
    before: Any
    after: Any
    effect: str  # live, replace, refused
    note: str


class SpecVersion(TypedDict):
    spec_id: str
    spec_version: int
    revision_id: NotRequired[str]
    created_at: str
    created_by: NotRequired[int | None]
    changes: NotRequired[list[FieldChange] | None]
    spec: dict[str, Any]


class DryRun(TypedDict):
    dry_run: bool
    deployment_id: str | None
    spec_version: int | None
    unchanged: bool
    changes: list[FieldChange]
    replaces_replicas: bool
    strategy: str
    rollout: str


class Alias(TypedDict):
    alias: str
    spec_version: int
    updated_at: str
    endpoint: str
    unchanged: NotRequired[bool]


class LogLine(TypedDict):
    replica_id: str
    offset: int
    line: str


class LogPage(TypedDict):
    lines: list[LogLine]
    next: Any


class NotRunning(Exception):
    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(f"berth is not running at {url}: start it with `berth up`")


class ApiError(Exception):
    """An error answer; `errors` lists each offending field and the rule it breaks."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.title = str(problem.get("title") or f"HTTP {status}")
        self.detail = str(problem.get("detail") or "")
        self.errors: list[ProblemField] = [
            {"field": str(e.get("field", "")), "rule": str(e.get("rule", ""))} for e in problem.get("errors") or []
        ]
        super().__init__(self.title if not self.detail else f"{self.title}: {self.detail}")


class BerthClient:
    def __init__(self, api_url: str, token: str | None = None, timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.api_url = api_url.rstrip("/")
        self._http = httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout)

    def __enter__(self) -> BerthClient:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise NotRunning(self.api_url) from exc
        if response.status_code >= 400:
            raise ApiError(response.status_code, _problem(response))
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # -- health, specs --------------------------------------------------------------------------

    def healthz(self) -> dict[str, Any]:
        return self._request("GET", "/healthz")  # type: ignore[no-any-return]

    def validate(self, spec: dict[str, Any]) -> None:
        self._request("POST", "/v1/specs/validate", json=spec)

    def check_token(self) -> None:
        """Raise ApiError (401) unless the API accepts the token; the cheapest call that needs one."""
        self._request("GET", "/v1/deployments", params={"limit": 1})

    # -- deployments ------------------------------------------------------------------------------

    def list_deployments(self, environment: str | None = None, project: str | None = None) -> list[Deployment]:
        params = {k: v for k, v in {"environment": environment, "project": project}.items() if v}
        return self._every_page("/v1/deployments", params)

    def get_deployment(self, ref: str) -> Deployment:
        return self._request("GET", f"/v1/deployments/{ref}")  # type: ignore[no-any-return]

    def find_deployment(self, ref: str) -> Deployment | None:
        """The deployment, or None when the project has none by that id or slug."""
        try:
            return self.get_deployment(ref)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def create_deployment(self, spec: dict[str, Any]) -> Deployment:
        return self._request("POST", "/v1/deployments", json=spec)  # type: ignore[no-any-return]

    def update_deployment(self, ref: str, spec: dict[str, Any], based_on_spec_id: str) -> Deployment:
        headers = {"If-Match": f'"{based_on_spec_id}"'}
        return self._request("PUT", f"/v1/deployments/{ref}", json=spec, headers=headers)  # type: ignore[no-any-return]

    def delete_deployment(self, ref: str) -> None:
        self._request("DELETE", f"/v1/deployments/{ref}")

    def scale(self, ref: str, replicas: int) -> Deployment:
        return self._request("POST", f"/v1/deployments/{ref}/scale", json={"replicas": replicas})  # type: ignore[no-any-return]

    def retry(self, ref: str) -> Deployment:
        return self._request("POST", f"/v1/deployments/{ref}/retry")  # type: ignore[no-any-return]

    def start(self, ref: str) -> Deployment:
        return self._request("POST", f"/v1/deployments/{ref}/start")  # type: ignore[no-any-return]

    def stop(self, ref: str) -> Deployment:
        return self._request("POST", f"/v1/deployments/{ref}/stop")  # type: ignore[no-any-return]

    def promote(self, ref: str) -> Deployment:
        return self._request("POST", f"/v1/deployments/{ref}/promote")  # type: ignore[no-any-return]

    def rollback(self, ref: str, spec_version: int) -> Deployment:
        body = {"spec_version": spec_version}
        return self._request("POST", f"/v1/deployments/{ref}/rollback", json=body)  # type: ignore[no-any-return]

    def aliases(self, ref: str) -> list[Alias]:
        return self._request("GET", f"/v1/deployments/{ref}/aliases")["items"]  # type: ignore[no-any-return]

    def set_alias(self, ref: str, alias: str, spec_version: int) -> Alias:
        body = {"spec_version": spec_version}
        return self._request("PUT", f"/v1/deployments/{ref}/aliases/{alias}", json=body)  # type: ignore[no-any-return]

    def remove_alias(self, ref: str, alias: str) -> None:
        self._request("DELETE", f"/v1/deployments/{ref}/aliases/{alias}")

    def history(self, ref: str, diff: bool = False) -> list[SpecVersion]:
        return self._every_page(f"/v1/deployments/{ref}/history", {"diff": "true"} if diff else {})

    def dry_run(self, spec: dict[str, Any], current: Deployment | None) -> DryRun:
        """What applying `spec` would do (against `current`, or as a new deployment); nothing is stored."""
        params = {"dryRun": "true"}
        if current is None:
            return self._request("POST", "/v1/deployments", json=spec, params=params)  # type: ignore[no-any-return]
        headers = {"If-Match": f'"{current["spec_id"]}"'}
        path = f"/v1/deployments/{current['slug']}"
        return self._request("PUT", path, json=spec, headers=headers, params=params)  # type: ignore[no-any-return]

    def _every_page(self, path: str, params: dict[str, Any]) -> list[Any]:
        """The items of every page of a list, following its `next` cursors."""
        items: list[Any] = []
        after = None
        while True:
            page = {"limit": PAGE_LIMIT} | ({"after": after} if after else {})
            body = self._request("GET", path, params=params | page)
            items += body["items"]
            after = body.get("next")
            if not after:
                return items

    def autoscaler_decision(self, ref: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/deployments/{ref}/autoscaling/decision")  # type: ignore[no-any-return]

    def status(self, ref: str) -> Status:
        return self._request("GET", f"/v1/deployments/{ref}/status")  # type: ignore[no-any-return]

    def logs(
        self, ref: str, replica: str | None = None, tail: int = 100, since: Any = None, *,
        since_time: str | None = None, until: str | None = None, grep: str | None = None,
        include_replaced: bool = False,
    ) -> LogPage:
        """`since`: the cursor of an earlier page; `since_time`/`until`: RFC 3339 or a duration back from now."""
        params: dict[str, Any] = {"tail": tail}
        if replica:
            params["replica"] = replica
        searched = {"since_time": since_time, "until": until, "grep": grep}
        params.update((k, v) for k, v in searched.items() if v is not None)
        if include_replaced:
            params["include_replaced"] = "true"
        if since is not None:
            params["since"] = since if isinstance(since, str | int) else json.dumps(since)
        return self._request("GET", f"/v1/deployments/{ref}/logs", params=params)  # type: ignore[no-any-return]

    def metrics(self, ref: str, window: str = "1h", step: str = "1m", version: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"window": window, "step": step}
        if version is not None:
            params["version"] = version
        return self._request("GET", f"/v1/deployments/{ref}/metrics", params=params)  # type: ignore[no-any-return]

    # -- secrets ----------------------------------------------------------------------------------

    def set_secret(self, name: str, value: str) -> None:
        self._request("PUT", f"/v1/secrets/{name}", json={"value": value})

    def restart_secret_users(self, name: str) -> list[str]:
        """Restart the deployments that use the secret; their names."""
        return list(self._request("POST", f"/v1/secrets/{name}/restart")["restarted"])

    def list_secrets(self) -> dict[str, list[str]]:
        """Secret name -> the deployments that use it."""
        answer = self._request("GET", "/v1/secrets")
        return {name: answer.get("used_by", {}).get(name, []) for name in answer["names"]}

    def delete_secret(self, name: str) -> None:
        self._request("DELETE", f"/v1/secrets/{name}")

    # -- alerts and webhooks ----------------------------------------------------------------------

    def alerts(self, state: str | None = None) -> list[dict[str, Any]]:
        params = {"state": state} if state else {}
        return list(self._request("GET", "/v1/alerts", params=params)["items"])

    def deployment_alerts(self, ref: str) -> list[dict[str, Any]]:
        return list(self._request("GET", f"/v1/deployments/{ref}/alerts")["items"])

    def set_webhook(self, url: str, secret: str) -> dict[str, Any]:
        return self._request("PUT", "/v1/webhooks", json={"url": url, "secret": secret})  # type: ignore[no-any-return]

    def webhooks(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/webhooks")["items"])

    def delete_webhook(self, url: str) -> None:
        self._request("DELETE", "/v1/webhooks", params={"url": url})


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"title": response.reason_phrase or f"HTTP {response.status_code}", "detail": response.text[:500]}
    if isinstance(body, dict):
        if "title" not in body and isinstance(body.get("detail"), str):
            body = {"title": body["detail"], **{k: v for k, v in body.items() if k != "detail"}}
        return body
    return {"title": f"HTTP {response.status_code}", "detail": str(body)[:500]}
