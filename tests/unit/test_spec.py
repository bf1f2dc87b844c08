"""The spec model: every seed example validates as written; invalid specs get every error at once,
each naming the field path and the rule."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from libs.spec import (
    MAX_ERRORS,
    MAX_SPEC_BYTES,
    DeploymentSpec,
    SpecError,
    SpecInvalid,
    load_spec,
    parse_json,
    scale_errors,
    slugify,
    validate_spec,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEEDS = Path(__file__).resolve().parents[3] / "shared" / "seeds"

MINIMAL = {"name": "m", "image": "img", "resources": {"ports": [8000]}}


def errors_of(document: object) -> dict[str, str]:
    with pytest.raises(SpecInvalid) as info:
        validate_spec(document)
    return {e.field: e.rule for e in info.value.errors}


def with_(**changes: object) -> dict[str, object]:
    return {**MINIMAL, **changes}


def test_seed_000_spec_as_written() -> None:
    spec = load_spec((EXAMPLES / "seed-000.yaml").read_text())
    assert spec.name == "my cool deployment"
    assert spec.slug == "my-cool-deployment"
    assert spec.resources.replicas == 2 and spec.resources.machineType == "A100-80G"
    assert spec.resources.autoscaling and [m.metric for m in spec.resources.autoscaling.metrics] == [
        "cpu", "memory", "requestDuration",
    ]
    assert [i.type for i in spec.integrations] == ["git-lfs", "s3"]
    readiness = spec.healthChecks.readiness
    assert readiness and readiness.headers[0].name == "Authorization"
    assert spec.secret_refs() == {"secretAccessKey", "my_paperspace_secret", "mySecretEnv"}


@pytest.mark.skipif(not SEEDS.exists(), reason="shared/seeds is not beside the repository")
def test_seed_000_file_itself_yields_the_example() -> None:
    """The example file is the seed's YAML, cut from the seed text with only `...` lines left out."""
    seed = next(SEEDS.glob("000_*.txt")).read_text()
    example = (EXAMPLES / "seed-000.yaml").read_text()
    for line in example.splitlines():
        assert line in seed


def test_seed_003_health_check_example_and_defaults() -> None:
    spec = load_spec((EXAMPLES / "seed-003-healthchecks.yaml").read_text())
    liveness, startup = spec.healthChecks.liveness, spec.healthChecks.startup
    assert liveness and (liveness.initialDelaySeconds, liveness.periodSeconds) == (0, 10)
    assert (liveness.timeoutSeconds, liveness.failureThreshold) == (1, 3)
    assert startup and startup.periodSeconds * startup.failureThreshold == 60


def test_seed_002_console_fields() -> None:
    spec = load_spec((EXAMPLES / "seed-002-console.yaml").read_text())
    assert spec.environment == "production" and spec.model and spec.model.version == "v2.1.0"
    assert spec.loadBalancer.algorithm == "least-connections" and spec.loadBalancer.stickySessions
    assert spec.updateStrategy.type == "canary"
    readiness = spec.effective_readiness()
    assert readiness and (readiness.path, readiness.periodSeconds) == ("/health", 30)


def test_defaults() -> None:
    spec = validate_spec(MINIMAL)
    assert (spec.apiVersion, spec.enabled, spec.resources.replicas, spec.environment) == ("v1", True, 1, "development")
    assert spec.loadBalancer.algorithm == "round-robin" and spec.updateStrategy.type == "rolling"


def test_json_is_accepted() -> None:
    assert load_spec('{"name": "j", "image": "i", "resources": {"ports": [1]}}').name == "j"


def test_typo_is_rejected_not_ignored() -> None:
    assert errors_of(with_(resources={"ports": [8000], "replica": 2})) == {
        "resources.replica": "unknown field (not part of the spec; check its spelling)"
    }


def test_every_error_is_reported_at_once() -> None:
    errors = errors_of({"name": "", "resources": {"ports": [], "replicas": -1}, "enabld": True})
    assert set(errors) == {"name", "image", "resources.ports", "resources.replicas", "enabld"}


@pytest.mark.parametrize(
    ("document", "field", "rule_part"),
    [
        (with_(apiVersion="v2"), "apiVersion", "'v1'"),
        (with_(resources={"ports": [70000]}), "resources.ports[0]", "less than or equal to 65535"),
        (with_(resources={"ports": ["http"]}), "resources.ports[0]", "integer"),
        (with_(resources={"ports": [1], "replicas": 2.5}), "resources.replicas", "integer"),
        (with_(enabled="perhaps"), "enabled", "boolean"),
        (with_(command="python app.py"), "command", "list"),
        (with_(env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]), "env[1].name", "must be unique: env[0].name"),
        (with_(env=[{"name": "A=B", "value": "1"}]), "env[0].name", "pattern"),
        (with_(env=[{"name": "A", "value": "secret:"}]), "env[0].value", "secret reference"),
        (with_(basicAuthKey="hunter2"), "basicAuthKey", "secret reference"),
        (with_(healthChecks={"readiness": {"path": "health"}}), "healthChecks.readiness.path", "must start with '/'"),
        (with_(healthChecks={"readiness": {"path": "/", "timeoutSeconds": 0}}), "healthChecks.readiness.timeoutSeconds", "greater than or equal to 1"),
        (with_(healthChecks={"liveness": {"path": "/", "failureThreshold": 0}}), "healthChecks.liveness.failureThreshold", "greater than or equal to 1"),
        (with_(healthChecks={"readiness": {"path": "/", "periodSecond": 3}}), "healthChecks.readiness.periodSecond", "unknown field"),
        (with_(healthChecks={"warmup": {"path": "/"}}), "healthChecks.warmup", "unknown field"),
        (with_(resources={"ports": [1], "autoscaling": {"enabled": True, "maxReplicas": 3}}), "resources.autoscaling", "at least one metric"),
        (with_(resources={"ports": [1], "autoscaling": {"maxReplicas": 0}}), "resources.autoscaling.maxReplicas", "greater than or equal to 1"),
        (with_(resources={"ports": [1], "autoscaling": {"maxReplicas": 2, "minReplicas": 3}}), "resources.autoscaling", "minReplicas must not exceed maxReplicas"),
        (with_(resources={"ports": [1], "autoscaling": {"maxReplicas": 2, "metrics": [{"metric": "disk", "value": 5}]}}), "resources.autoscaling.metrics[0].metric", "'cpu'"),
        (with_(resources={"ports": [1], "autoscaling": {"maxReplicas": 2, "metrics": [{"metric": "cpu", "value": 150}]}}), "resources.autoscaling.metrics[0]", "at most 100"),
        (with_(resources={"ports": [1], "autoscaling": {"maxReplicas": 2, "metrics": [{"metric": "cpu", "summary": "p99", "value": 5}]}}), "resources.autoscaling.metrics[0].summary", "'average'"),
        (with_(resources={"ports": [1], "autoscaling": {"maxReplicas": 2, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 3601}}}}), "resources.autoscaling.behavior.scaleDown.stabilizationWindowSeconds", "less than or equal to 3600"),
        (with_(resources={"ports": [1], "autoscaling": {"maxReplicas": 2, "behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 15}]}}}}), "resources.autoscaling.behavior.scaleUp.policies[0].value", "greater than 0"),
        (with_(resources={"ports": [1], "autoscaling": {"maxReplicas": 2, "behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 1801}]}}}}), "resources.autoscaling.behavior.scaleUp.policies[0].periodSeconds", "less than or equal to 1800"),
        (with_(resources={"ports": [1], "autoscaling": {"maxReplicas": 2, "behavior": {"scaleUp": {"policies": []}}}}), "resources.autoscaling.behavior.scaleUp.policies", "at least 1"),
        (with_(resources={"ports": [1], "autoscaling": {"maxReplicas": 2, "behavior": {"scaleUp": {"selectPolicy": "Average"}}}}), "resources.autoscaling.behavior.scaleUp.selectPolicy", "'Max'"),
        (with_(resources={"ports": [1], "replicas": 0, "autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 2, "metrics": [{"metric": "cpu", "value": 50}]}}), "resources.autoscaling", "minReplicas 0 needs a requestDuration"),
        (with_(resources={"ports": [1], "gpuType": "A100"}), "resources", "gpuType needs gpuCount"),
        (with_(resources={"ports": [1], "gpuCount": 1, "gpuType": "H200"}), "resources.gpuType", "'T4'"),
        (with_(integrations=[{"type": "ftp", "name": "a", "path": "/a"}]), "integrations[0]", "must be one of 'git-lfs', 's3', 'volume'"),
        (with_(integrations=[{"type": "volume", "name": "a", "path": "/a", "hostPath": "data/a"}]), "integrations[0].hostPath", "pattern"),
        (with_(integrations=[{"type": "volume", "name": "a", "path": "/a", "hostPath": "/srv/data/../../etc"}]), "integrations[0].hostPath", "'..' segments"),
        (with_(integrations=[{"type": "volume", "name": "a", "path": "/a"}]), "integrations[0].hostPath", "required unless claimName"),
        (with_(integrations=[{"type": "volume", "name": "a", "path": "/a", "claimName": "Data_Set"}]), "integrations[0].claimName", "pattern"),
        (with_(integrations=[{"type": "volume", "name": "a", "path": "/a", "hostPath": "/srv", "readOnly": "sometimes"}]), "integrations[0].readOnly", "boolean"),
        (with_(integrations=[{"type": "git-lfs", "name": "a", "path": "models", "url": "https://h/x"}]), "integrations[0].path", "pattern"),
        (with_(integrations=[{"type": "s3", "name": "a", "path": "/a", "url": "https://b"}]), "integrations[0].url", "pattern"),
        (with_(integrations=[{"type": "s3", "name": "a", "path": "/a", "url": "s3://b", "accessKeyId": "AK"}]), "integrations[0]", "together"),
        (with_(integrations=[{"type": "s3", "name": "a", "path": "/a", "url": "s3://b", "accessKeyId": "AK", "secretAccessKey": "plain"}]), "integrations[0].secretAccessKey", "never the key itself"),
        (with_(integrations=[{"type": "git-lfs", "name": "a", "path": "/a", "url": "https://h/x", "branch": "main"}]), "integrations[0].branch", "unknown field"),
        (with_(integrations=[{"type": "git-lfs", "name": "a", "path": "/a", "url": "https://h/x", "password": "hf_plain"}]), "integrations[0].password", "never the password itself"),
        (with_(integrations=[{"type": "git-lfs", "name": "a", "path": "/a", "url": "https://h/x", "password": "secret:bad name"}]), "integrations[0].password", "secret reference must be"),
        (with_(integrations=[{"type": "git-lfs", "name": "a", "path": "/a", "url": "ssh://h/x", "password": "secret:t"}]), "integrations[0].password", "the url must be http:// or https://"),
        (with_(integrations=[{"type": "git-lfs", "name": "a", "path": "/a", "url": "https://h/x", "username": "alice"}]), "integrations[0].username", "needs a password"),
        (with_(integrations=[{"type": "git-lfs", "name": "a", "path": "/a", "url": "https://alice:hf_x@h/x"}]), "integrations[0].url", "must not hold a password"),
        (with_(integrations=[{"type": "git-lfs", "name": "a", "path": "/a", "url": "ssh://git@h/x", "sshKey": "-----BEGIN OPENSSH PRIVATE KEY-----"}]), "integrations[0].sshKey", "never the key itself"),
        (with_(integrations=[{"type": "git-lfs", "name": "a", "path": "/a", "url": "https://h/x", "sshKey": "secret:deploy-key"}]), "integrations[0].sshKey", "the url must be ssh://"),
        (with_(integrations=[{"type": "git-lfs", "name": "a", "path": "/a", "url": "https://h/x"}, {"type": "git-lfs", "name": "a", "path": "/b", "url": "https://h/y"}]), "integrations[1].name", "must be unique: integrations[0].name"),
        (with_(integrations=[{"type": "git-lfs", "name": "a", "path": "/m", "url": "https://h/x"}, {"type": "git-lfs", "name": "b", "path": "/m", "url": "https://h/y"}]), "integrations[1].path", "must be unique: integrations[0].path"),
        (with_(integrations=[{"type": "git-lfs", "name": "a", "path": "/models/../etc", "url": "https://h/x"}]), "integrations[0].path", "'..' segments"),
        (with_(integrations=[{"type": "git-lfs", "name": "a", "path": "/models/./x", "url": "https://h/x"}]), "integrations[0].path", "'..' segments"),
        (with_(integrations=[{"type": "git-lfs", "name": "a", "path": "/m", "url": "https://h/x"}, {"type": "git-lfs", "name": "b", "path": "/m/a/", "url": "https://h/y"}]), "integrations[1].path", "inside integrations[0]"),
        (with_(integrations=[{"type": "git-lfs", "name": "a", "path": "/m", "url": "ftp://h/x"}]), "integrations[0].url", "pattern"),
        (with_(integrations=[{"type": "s3", "name": "a", "path": "/a", "url": "s3://b", "endpointUrl": "file:///etc"}]), "integrations[0].endpointUrl", "pattern"),
        (with_(integrations=[{"type": "git-lfs", "name": f"i{n}", "path": f"/p{n}", "url": "https://h/x"} for n in range(6)]), "integrations", "at most 5"),
        (with_(environment="prod"), "environment", "'development'"),
        (with_(loadBalancer={"algorithm": "random"}), "loadBalancer.algorithm", "'round-robin'"),
        (with_(updateStrategy={"type": "rolling", "canaryPercent": 10}), "updateStrategy.canaryPercent", "only to type 'canary'"),
        (with_(updateStrategy={"maxSurge": 0, "maxUnavailable": "0%"}), "updateStrategy.maxUnavailable", "may not be 0 when maxSurge is 0"),
        (with_(updateStrategy={"maxSurge": "150%"}), "updateStrategy.maxSurge", 'a percent from "0%" to "100%"'),
        (with_(updateStrategy={"maxUnavailable": "1"}), "updateStrategy.maxUnavailable", "a count (0 or more)"),
        (with_(updateStrategy={"type": "blue-green", "maxSurge": 1}), "updateStrategy.maxSurge", "only to type 'rolling'"),
        (with_(updateStrategy={"type": "rolling", "scaleDownDelaySeconds": 5}), "updateStrategy.scaleDownDelaySeconds", "only to type 'blue-green'"),
        (with_(updateStrategy={"type": "canary", "canarySteps": [50, 20]}), "updateStrategy.canarySteps", "must rise"),
        (with_(updateStrategy={"type": "canary", "canarySteps": [0]}), "updateStrategy.canarySteps[0]", "greater than or equal to 1"),
        (with_(updateStrategy={"type": "rolling", "analysis": {}}), "updateStrategy.analysis", "only to type 'canary'"),
        (with_(updateStrategy={"type": "canary", "analysis": {"maxP99LatencyRatio": 0.5}}), "updateStrategy.analysis.maxP99LatencyRatio", "greater than or equal to 1"),
        (with_(updateStrategy={"type": "canary", "analysis": {"maxErrorRateIncrease": 101}}), "updateStrategy.analysis.maxErrorRateIncrease", "less than or equal to 100"),
        (with_(updateStrategy={"type": "canary", "analysis": {"minRequests": 0}}), "updateStrategy.analysis.minRequests", "greater than or equal to 1"),
        (with_(model={"id": "m"}), "model.version", "field required"),
        (with_(resources={"ports": [1], "replicas": False}), "resources.replicas", "valid integer"),
        (with_(resources={"ports": [1], "replicas": "2"}), "resources.replicas", "valid integer"),
        (with_(resources={"ports": [True]}), "resources.ports[0]", "valid integer"),
        (with_(resources={"ports": [1], "cpu": float("inf")}), "resources.cpu", "finite number"),
        (with_(resources={"ports": [1], "memory": float("nan")}), "resources.memory", "finite number"),
        (with_(resources={"ports": [1], "cpu": True}), "resources.cpu", "valid number"),
        (with_(resources={"ports": [1], "autoscaling": {"maxReplicas": 2, "metrics": [{"metric": "requestDuration", "value": float("inf")}]}}), "resources.autoscaling.metrics[0].value", "finite number"),
        (with_(resources={"ports": [1], "replicas": 1, "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 3, "metrics": [{"metric": "cpu", "value": 50}]}}), "resources", "below autoscaling.minReplicas"),
        (with_(name="invoice\u202egnp.exe"), "name", "bidi-override"),
        (with_(name="admin\u200b"), "name", "zero-width"),
        (with_(name="tab\there"), "name", "control"),
    ],
)
def test_invalid_specs_name_field_and_rule(document: dict[str, object], field: str, rule_part: str) -> None:
    errors = errors_of(document)
    assert field in errors, errors
    assert rule_part in errors[field], errors[field]


def test_git_credentials_are_secret_references_checked_against_the_project() -> None:
    git = {"type": "git-lfs", "name": "a", "path": "/a", "url": "https://huggingface.co/x"}
    spec = validate_spec(with_(integrations=[
        {**git, "username": "secret:hf-user", "password": "secret:hf-token"},
        {**git, "name": "b", "path": "/b", "username": "alice", "password": "secret:hf-token"},
    ]))  # fmt: skip
    assert spec.secret_ref_fields() == [
        ("integrations[0].username", "hf-user"), ("integrations[0].password", "hf-token"),
        ("integrations[1].password", "hf-token"),
    ]
    with_key = validate_spec(with_(integrations=[{**git, "url": "ssh://git@h/x", "sshKey": "secret:deploy-key"}]))
    assert with_key.secret_ref_fields() == [("integrations[0].sshKey", "deploy-key")]


@pytest.mark.parametrize("text", ["name: [unclosed", "- just\n- a list\n", "42"])
def test_not_a_spec_document(text: str) -> None:
    with pytest.raises(SpecInvalid) as info:
        load_spec(text)
    assert info.value.errors[0].field == "(spec)"


def test_repeated_integration_names_and_paths_are_both_reported() -> None:
    twin = {"type": "git-lfs", "name": "a", "path": "/m", "url": "https://h/x"}
    errors = errors_of(with_(integrations=[twin, {**twin, "url": "https://h/y"}]))
    assert set(errors) == {"integrations[1].name", "integrations[1].path"}


def test_many_repeated_env_names_are_found_in_linear_time_and_reported_in_part() -> None:
    env = [{"name": f"E{n % 15_000}", "value": "v"} for n in range(30_000)]
    started = time.perf_counter()
    with pytest.raises(SpecInvalid) as info:
        validate_spec(with_(env=env))
    elapsed = time.perf_counter() - started
    assert info.value.errors[0] == SpecError("env[15000].name", "must be unique: env[0].name is the same")
    assert info.value.errors[-1] == SpecError("(spec)", f"{15_000 - MAX_ERRORS} more errors not shown")
    assert elapsed < 5, f"{elapsed:.1f} s: quadratic again?"


@pytest.mark.parametrize(
    ("text", "rule_part"),
    [
        ("a: " + "[" * 40 + "]" * 40, "nested deeper than 32"),
        ("a:\n" + "".join(" " * n + f"k{n}:\n" for n in range(1, 40)), "nested deeper than 32"),
        ("resources: {replicas: " + "1" * 5000 + "}", "more than 18 digits at line 1"),
        ("a: &a [*a]", "refers to a node that contains it"),
        # A billion laughs: 60 bytes of aliases that expand to gigabytes.
        ("a: &a ['lol', 'lol']\n" + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")), "larger than the limit"),
    ],
)
def test_documents_too_deep_or_too_large_are_refused_before_validation(text: str, rule_part: str) -> None:
    with pytest.raises(SpecInvalid) as info:
        load_spec(text)
    [error] = info.value.errors
    assert error.field == "(spec)" and rule_part in error.rule


@pytest.mark.parametrize(
    ("text", "rule_part"),
    [('{"a": ' + "[" * 3000 + "]" * 3000 + "}", "nested deeper"), ('{"a": 1' + "0" * 5000 + "}", "digits"),
     ('{"name": "a\nb', "not valid JSON at line 1, column 12")],
)
def test_json_documents_too_deep_or_not_json_are_refused(text: str, rule_part: str) -> None:
    with pytest.raises(SpecInvalid) as info:
        parse_json(text)
    assert rule_part in info.value.errors[0].rule


def test_a_spec_larger_than_the_limit_is_refused_by_its_size() -> None:
    with pytest.raises(SpecInvalid) as info:
        parse_json(json.dumps(with_(resources={"ports": [8000] * 700_000})))
    assert info.value.errors == [SpecError("(spec)", f"larger than the limit of a spec, {MAX_SPEC_BYTES} bytes as JSON")]


def test_numbers_in_free_text_fields_are_read_as_text() -> None:
    spec = load_spec("name: m\nimage: i\nresources: {ports: [1], machineType: 12}\nenv: [{name: PORT, value: 8000}]\n"
                     "model: {id: 7, version: 2}\n")
    assert spec.resources.machineType == "12" and spec.env[0].value == "8000"
    assert spec.model is not None and (spec.model.id, spec.model.version) == ("7", "2")
    assert "resources.machineType" in errors_of(with_(resources={"ports": [1], "machineType": 1.5}))


SEED_AUTOSCALING = {"enabled": True, "maxReplicas": 5, "metrics": [{"metric": "cpu", "value": 50}]}


@pytest.mark.parametrize(
    ("autoscaling", "replicas", "allowed"),
    [
        (None, 0, True),  # no autoscaling: any count, none included
        ({**SEED_AUTOSCALING, "enabled": False}, 0, True),
        (SEED_AUTOSCALING, 0, False),  # minReplicas defaults to the spec's replicas (2)
        (SEED_AUTOSCALING, 1, False),
        (SEED_AUTOSCALING, 2, True),
        (SEED_AUTOSCALING, 5, True),
        (SEED_AUTOSCALING, 6, False),
        ({**SEED_AUTOSCALING, "minReplicas": 0, "metrics": [{"metric": "rps", "value": 5}]}, 0, True),
    ],
)
def test_a_manual_scale_stays_within_the_autoscaling_bounds(
    autoscaling: dict[str, object] | None, replicas: int, allowed: bool
) -> None:
    spec = validate_spec(with_(resources={"ports": [1], "replicas": 2, "autoscaling": autoscaling}))
    errors = scale_errors(spec, replicas)
    assert (errors == []) is allowed
    assert all(e.field == "replicas" and "stop the deployment" in e.rule for e in errors)


@pytest.mark.parametrize(
    ("name", "slug"),
    [("my cool deployment", "my-cool-deployment"), ("BERT Sentiment API", "bert-sentiment-api"),
     ("  Ünïcode__model!! v2 ", "unicode-model-v2"), ("a" * 80, "a" * 63),
     ("Модель", "model"), ("模型 服务", "mo-xing-fu-wu")],
)
def test_slug_is_dns_1123(name: str, slug: str) -> None:
    assert slugify(name) == slug


def test_names_without_letters_to_transliterate_get_distinct_slugs() -> None:
    slugs = {slugify(name) for name in ("🚀", "🚀🚀", "!!!", "???")}
    assert len(slugs) == 4
    assert all(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", slug) for slug in slugs)


def test_round_trip_through_json_keeps_the_spec() -> None:
    spec = load_spec((EXAMPLES / "seed-000.yaml").read_text())
    again = DeploymentSpec.model_validate_json(spec.model_dump_json())
    assert again == spec


def probe_errors(kind: str, **probe: object) -> dict[str, str]:
    return errors_of(with_(healthChecks={kind: {"path": "/health", **probe}}))


# Bounds and per-kind rules of Kubernetes' core/v1 Probe (pkg/apis/core/validation/validation.go:
# validateProbe, validateLivenessProbe, validateStartupProbe; the fields are int32; minimums as the
# API reference documents them: "Minimum value is 1", initialDelaySeconds "Minimum value is 0").
@pytest.mark.parametrize(
    ("kind", "probe", "field", "rule_part"),
    [
        ("liveness", {"successThreshold": 2}, "successThreshold", "must be 1 for liveness and startup"),
        ("startup", {"successThreshold": 3}, "successThreshold", "must be 1 for liveness and startup"),
        ("readiness", {"successThreshold": 0}, "successThreshold", "greater than or equal to 1"),
        ("readiness", {"initialDelaySeconds": -1}, "initialDelaySeconds", "greater than or equal to 0"),
        ("readiness", {"periodSeconds": 0}, "periodSeconds", "greater than or equal to 1"),
        ("readiness", {"periodSeconds": 10**20}, "periodSeconds", "less than or equal to 2147483647"),
        ("liveness", {"timeoutSeconds": 2**31}, "timeoutSeconds", "less than or equal to 2147483647"),
        ("startup", {"failureThreshold": 2**31}, "failureThreshold", "less than or equal to 2147483647"),
        ("readiness", {"periodSeconds": 1e20}, "periodSeconds", "valid integer"),
        ("readiness", {"periodSeconds": float("inf")}, "periodSeconds", "valid integer"),
        ("readiness", {"periodSeconds": float("nan")}, "periodSeconds", "valid integer"),
        ("readiness", {"periodSeconds": 2.5}, "periodSeconds", "valid integer"),
        ("readiness", {"periodSeconds": True}, "periodSeconds", "valid integer"),
        ("readiness", {"periodSeconds": "10"}, "periodSeconds", "valid integer"),
        ("readiness", {"port": 9000}, "port", "must be one of resources.ports (8000)"),
        ("liveness", {"headers": [{"name": "X-Token", "value": "a\r\nX-Injected: 1"}]}, "headers[0].value", "control characters"),
        ("readiness", {"headers": [{"name": "X-Token", "value": "a\nb"}]}, "headers[0].value", "control characters"),
        ("readiness", {"headers": [{"name": "X-Token", "value": "a\x00b"}]}, "headers[0].value", "control characters"),
        ("readiness", {"headers": [{"name": "X Token", "value": "a"}]}, "headers[0].name", "letters, digits and '-'"),
        ("readiness", {"headers": [{"name": "X-Token:", "value": "a"}]}, "headers[0].name", "letters, digits and '-'"),
        ("readiness", {"path": "/health\r\nHost: evil"}, "path", "no spaces or control characters"),
        ("readiness", {"path": "/health check"}, "path", "no spaces or control characters"),
        ("readiness", {"scheme": "HTTPS"}, "scheme", "unknown field"),
        ("readiness", {"host": "example.com"}, "host", "unknown field"),
    ],
)
def test_probe_rules_name_the_field_and_the_rule(kind: str, probe: dict[str, object], field: str, rule_part: str) -> None:
    errors = probe_errors(kind, **probe)
    assert f"healthChecks.{kind}.{field}" in errors, errors
    assert rule_part in errors[f"healthChecks.{kind}.{field}"]
    for value in probe.values():  # the rule never repeats what was sent (a header may hold a token)
        assert not isinstance(value, str) or value not in str(errors)


def test_probe_rules_that_hold_are_accepted() -> None:
    spec = validate_spec(
        with_(
            resources={"ports": [8000, 9090]},
            healthChecks={
                "readiness": {"path": "/ready?full=1", "port": 9090, "successThreshold": 3, "periodSeconds": 2**31 - 1},
                "liveness": {"path": "/live", "successThreshold": 1, "headers": [{"name": "X-Tab", "value": "a\tb"}]},
            },
        )
    )
    readiness, liveness = spec.healthChecks.readiness, spec.healthChecks.liveness
    assert readiness and (readiness.successThreshold, readiness.port) == (3, 9090)
    assert liveness and liveness.successThreshold == 1 and liveness.headers[0].value == "a\tb"


def test_the_console_health_check_path_follows_the_probe_path_rule() -> None:
    errors = errors_of(with_(loadBalancer={"healthCheckPath": "/h\r\nX: 1"}))
    assert "no spaces or control characters" in errors["loadBalancer.healthCheckPath"]
    errors = errors_of(with_(loadBalancer={"healthCheckPath": "/h", "healthCheckIntervalSeconds": 10**20}))
    assert "less than or equal to 2147483647" in errors["loadBalancer.healthCheckIntervalSeconds"]
