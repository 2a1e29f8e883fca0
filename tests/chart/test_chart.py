"""Tests of the Helm chart in helm/latchkey: every ci/*-values.yaml scenario is rendered with Helm's
Go SDK (helm-python-sdk), linted strictly, and each manifest validated in strict mode with
kubernetes-validate; the important fields are asserted, and the rendered config.toml is fed to the
real binary. Run by scripts/test-chart."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate_utils

import chart_support as support
from chart_support import CHART, render, render_scenario, scenario_values

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion: native gRPC probes are GA in
# 1.27) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.27", kubernetes_validate_utils.major_minor(kubernetes_validate.latest_version())]
# Custom resources kubernetes-validate has no schema for: their key fields are asserted instead.
CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "ServiceMonitor")}
REQUIRED_SCENARIOS = {"default", "smtp-existing-secret", "tls", "metrics-on", "postgres", "postgres-hpa", "ingress"}

# The config model of src/config.rs: the only keys the chart may render (the server rejects
# unknown keys), by table. Lists of tables are given by their item keys.
CONFIG_KEYS: dict[str, set[str]] = {
    "": {
        "profile",
        "listen",
        "metrics_listen",
        "data_dir",
        "server_key_file",
        "issuer",
        "shutdown_delay_seconds",
        "shutdown_grace_seconds",
        "reload_check_seconds",
        "limits",
        "log",
        "auth",
        "links",
        "sessions",
        "store",
        "mail",
        "oauth",
        "sign_in",
        "tls",
    },
    "log": {"format", "level"},
    "auth": {"required", "api_keys"},
    "auth.api_keys[]": {"name", "sha256", "scopes"},
    "links": {
        "default_redirect_url",
        "redirect_allow_list",
        "login_magic_link_url",
        "signup_magic_link_url",
        "enchanted_expiration_minutes",
    },
    "sessions": {"default_duration_minutes", "jwt_minutes", "audience", "signing_key_rotation_days"},
    "store": {"backend", "retention_hours", "sweep_interval_seconds", "sled", "postgres"},
    "store.sled": {"cache_capacity_mib", "durability", "commit_linger_micros"},
    "store.postgres": {
        "url",
        "url_file",
        "pool_size",
        "connect_timeout_seconds",
        "statement_timeout_seconds",
        "ca_file",
        "notify",
        "recheck_millis",
        "startup_wait_seconds",
    },
    "mail": {
        "transport",
        "from",
        "product_name",
        "default_locale",
        "templates_dir",
        "max_attempts",
        "retry_base_seconds",
        "retry_max_seconds",
        "concurrency",
        "smtp",
        "rate_limit",
    },
    "mail.smtp": {
        "host",
        "port",
        "tls",
        "username",
        "password_file",
        "ca_file",
        "timeout_seconds",
        "pool_size",
    },
    "mail.rate_limit": {"burst", "per_minute"},
    "oauth": {"access_token_minutes", "clients"},
    "oauth.clients[]": {
        "client_id",
        "name",
        "redirect_uris",
        "scopes",
        "client_secret_sha256",
        "post_logout_redirect_uris",
    },
    "sign_in": {"public_url", "product_name", "logo_url", "accent_color"},
    "tls": {"cert_file", "key_file", "client_ca_file"},
}

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Secrets the operator would create for scenarios that use existing ones (server key made with
# `latchkey generate-server-key`; test-only TLS material from fixtures/).
EXTERNAL_SECRETS = {
    "latchkey-secrets": {
        "server-key": "6hU6gyBESqFyE0sLvBHObN9WiXWO9P1lpXSVIuqJL7c\n",
        "smtp-password": "external-smtp-password",
    },
    "latchkey-tls": {
        "tls.crt": (FIXTURES / "tls.crt").read_text(),
        "tls.key": (FIXTURES / "tls.key").read_text(),
        "ca.crt": (FIXTURES / "ca.crt").read_text(),
    },
    "latchkey-client-ca": {"ca.crt": (FIXTURES / "ca.crt").read_text()},
    # The database's CA (the fixture CA signed the certificate the tests' TLS PostgreSQL serves).
    "latchkey-database-ca": {"ca.crt": (FIXTURES / "ca.crt").read_text()},
}
# The password of the URL in ci/postgres-hpa-values.yaml, which the chart keeps in its Secret.
PLACEHOLDER_DATABASE_PASSWORD = "ci-placeholder-password"

ALL_SCENARIOS = sorted(support.scenarios())


@pytest.fixture(scope="module", params=ALL_SCENARIOS)
def scenario(request) -> tuple[str, support.Rendered]:
    return request.param, render_scenario(request.param)


def config_of(rendered: support.Rendered) -> dict[str, Any]:
    return tomllib.loads(rendered.config_toml)


def expect_render_failure(values: dict[str, Any], *fragments: str) -> str:
    with pytest.raises(helm.HelmError) as failure:
        render(values)
    message = str(failure.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in the error: {message}"
    return message


def default_with(override: dict[str, Any]) -> dict[str, Any]:
    return support.merged(scenario_values("default"), override)


def postgres_with(override: dict[str, Any]) -> dict[str, Any]:
    return support.merged(scenario_values("postgres"), override)


def is_postgres(rendered: support.Rendered) -> bool:
    return config_of(rendered)["store"]["backend"] == "postgres"


# --- PostgreSQL for the runs of the real binary -----------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[support.Postgres]:
    """The PostgreSQL the test command started (LATCHKEY_TEST_POSTGRES_URL), else one of our own."""
    given = os.environ.get("LATCHKEY_TEST_POSTGRES_URL")
    if given:
        yield support.Postgres(given)
        return
    server = support.start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tls_postgres() -> Iterator[support.Postgres]:
    """Always one of our own: it accepts TLS connections only, with the fixture certificate for
    127.0.0.1 (signed by fixtures/ca.crt), so a server that connects proves `ca_file` works."""
    server = support.start_postgres(tls_from=FIXTURES)
    try:
        yield server
    finally:
        server.stop()


# --- scenarios, lint, Kubernetes validation -------------------------------------------------


def test_the_required_scenarios_exist():
    assert REQUIRED_SCENARIOS <= set(ALL_SCENARIOS), ALL_SCENARIOS


@pytest.mark.parametrize("name", ALL_SCENARIOS)
@pytest.mark.parametrize("kubernetes", KUBERNETES_VERSIONS)
def test_lint_is_clean_in_strict_mode(name, kubernetes):
    report = helm.lint(CHART, scenario_values(name), strict=True, kube_version=f"v{kubernetes}.0")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == [], report
    # Severity 1 is INFO (only "icon is recommended"); 2 is WARNING, 3 ERROR.
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report["messages"]


def test_lint_catches_bad_values():
    report = helm.lint(CHART, default_with({"store": {"durability": "sometimes"}}), strict=True)
    assert report["errors"] or any(m["severity"] >= 2 for m in report["messages"]), report


def test_every_manifest_validates_strictly(scenario):
    name, rendered = scenario
    validated = crds = 0
    for manifest in rendered.manifests:
        assert manifest["metadata"]["namespace"] == support.NAMESPACE, manifest["metadata"]
        if (manifest["apiVersion"], manifest["kind"]) in CUSTOM_RESOURCES:
            crds += 1
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                pytest.fail(f"{name}: {manifest['kind']}/{manifest['metadata']['name']} on {version}: {path}: {error.message}")
        validated += 1
    assert validated >= 6, rendered.kinds()
    support.VALIDATED[name] = (validated, crds, KUBERNETES_VERSIONS)


def test_strict_validation_does_reject_an_unknown_field():
    statefulset = render_scenario("default").one("StatefulSet")
    statefulset["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_custom_resources_are_servicemonitors_only_with_metrics_on():
    for name in ALL_SCENARIOS:
        rendered = render_scenario(name)
        monitors = rendered.maybe("ServiceMonitor")
        assert bool(monitors) == bool(scenario_values(name).get("metrics", {}).get("serviceMonitor", {}).get("enabled")), name
        others = {(m["apiVersion"], m["kind"]) for m in rendered.manifests} & CUSTOM_RESOURCES
        assert others <= {("monitoring.coreos.com/v1", "ServiceMonitor")}


def test_default_scenario_kinds():
    assert render_scenario("default").kinds() == [
        "ConfigMap",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ]


# --- the pod --------------------------------------------------------------------------------


def test_grpc_probes_without_tls_but_liveness_on_healthz():
    for scenario in ("default", "postgres"):
        container = render_scenario(scenario).container
        for probe in ("startupProbe", "readinessProbe"):
            assert container[probe]["grpc"] == {"port": 50051}, (probe, container[probe])
            assert "httpGet" not in container[probe]
        # gRPC health is NOT_SERVING while a database is unreachable; restarting would not help.
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
        assert "grpc" not in container["livenessProbe"]
        assert container["readinessProbe"]["periodSeconds"] == 5


def test_http_probes_with_tls():
    container = render_scenario("tls").container
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "grpc" not in container[probe]


def test_ports():
    rendered = render_scenario("default")
    ports = {port["name"]: port for port in rendered.container["ports"]}
    assert ports["grpc"]["containerPort"] == 50051
    assert ports["http-metrics"]["containerPort"] == 9464
    service = rendered.one("Service", "latchkey")
    by_name = {port["name"]: port for port in service["spec"]["ports"]}
    assert by_name["grpc"] == {
        "name": "grpc",
        "port": 50051,
        "targetPort": "grpc",
        "protocol": "TCP",
        "appProtocol": "grpc",
    }
    assert by_name["http-metrics"]["port"] == 9464
    assert by_name["http-metrics"]["targetPort"] == "http-metrics"
    headless = rendered.one("Service", "latchkey-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert rendered.one("StatefulSet")["spec"]["serviceName"] == "latchkey-headless"
    # A Deployment governs no pod names: no headless Service with PostgreSQL.
    assert [service["metadata"]["name"] for service in render_scenario("postgres").maybe("Service")] == ["latchkey"]


def test_hardened_security_contexts(scenario):
    _, rendered = scenario
    pod = rendered.pod_spec
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert rendered.container["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for account in rendered.maybe("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


def test_the_container_runs_serve_with_the_mounted_config(scenario):
    _, rendered = scenario
    container = rendered.container
    assert container["args"] == ["serve", "--config", "/etc/latchkey/config.toml"]
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert mounts["/etc/latchkey/config.toml"]["subPath"] == "config.toml"
    assert mounts["/var/lib/latchkey"]["name"] == "data"
    assert "/etc/latchkey/secrets" in mounts
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    assert "env" not in container, "secrets come from files, config from the ConfigMap"


def test_a_persistent_volume_claim_template_holds_the_data():
    statefulset = render_scenario("default").one("StatefulSet")
    assert statefulset["spec"]["replicas"] == 1
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in claim["spec"], "null means the cluster's default class"
    volume_names = {volume["name"] for volume in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert "data" not in volume_names, "the data volume comes from the claim template"

    full = render_scenario("full").one("StatefulSet")["spec"]["volumeClaimTemplates"][0]
    assert full["spec"]["storageClassName"] == "fast-ssd"
    assert full["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert full["metadata"]["annotations"] == {"example.com/backup": "daily"}


def test_termination_grace_outlasts_the_shutdown_delay_and_the_drain(scenario):
    name, rendered = scenario
    config = config_of(rendered)
    grace = rendered.pod_spec["terminationGracePeriodSeconds"]
    assert config["shutdown_delay_seconds"] > 0, "routing must stop before the server stops accepting"
    assert config["shutdown_grace_seconds"] == grace - 5, (name, grace)
    assert config["shutdown_grace_seconds"] >= config["shutdown_delay_seconds"] + 3, (name, grace)
    readiness = rendered.container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= config["shutdown_delay_seconds"]


def test_a_grace_period_shorter_than_the_drain_fails():
    expect_render_failure(
        default_with({"terminationGracePeriodSeconds": 12, "shutdownDelaySeconds": 5}),
        "terminationGracePeriodSeconds is 12",
        "at least shutdownDelaySeconds + 8 = 13",
    )


def test_checksum_annotation_is_the_configmap_digest_and_follows_config_changes():
    def checksum(rendered: support.Rendered) -> str:
        return rendered.one("StatefulSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    default = render_scenario("default")
    configmap_text = default.template_text("configmap.yaml")
    assert checksum(default) == hashlib.sha256(configmap_text.encode()).hexdigest()
    assert checksum(render_scenario("default")) == checksum(default), "stable across renders"
    for change in (
        {"log": {"level": "debug"}},
        {"store": {"durability": "flush"}},
        {"auth": {"apiKeys": [{"name": "other", "sha256": "ab" * 32, "scopes": ["admin"]}]}},
        {"mail": {"templates": {"hello": {"subject": "s", "html": "h", "text": "t"}}}},
    ):
        assert checksum(render(default_with(change))) != checksum(default), change
    # Values outside the config do not roll the pod.
    assert checksum(render(default_with({"resources": {"limits": {"memory": "1Gi"}}}))) == checksum(default)


# --- fail guards ------------------------------------------------------------------------------


def test_more_than_one_replica_fails_with_the_reason():
    message = expect_render_failure(default_with({"replicaCount": 2}), "replicaCount is 2")
    assert "the sled store holds an exclusive lock" in message
    assert "one replica only" in message
    assert "for many replicas set store.backend=postgres" in message


def test_zero_replicas_stops_the_server_and_keeps_the_data():
    assert render(default_with({"replicaCount": 0})).one("StatefulSet")["spec"]["replicas"] == 0


def test_no_api_key_fails():
    values = scenario_values("default")
    values["auth"]["apiKeys"] = []
    expect_render_failure(values, "auth.apiKeys is empty", "at least one API key")


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ({"mail": {"smtp": {"host": ""}}}, ["mail.smtp.host is empty"]),
        ({"mail": {"smtp": {"password": "p"}}}, ["a password needs a username"]),
        ({"mail": {"smtp": {"username": "u"}}}, ["mail.smtp.password is empty"]),
        (
            {"existingSecret": "s", "serverKey": {"value": "6hU6gyBESqFyE0sLvBHObN9WiXWO9P1lpXSVIuqJL7c"}},
            ["serverKey.value and existingSecret are both set"],
        ),
        (
            {"existingSecret": "s", "mail": {"smtp": {"username": "u", "password": "p"}}},
            ["mail.smtp.password and existingSecret are both set"],
        ),
        ({"tls": {"enabled": True}}, ["tls.enabled needs tls.secretName"]),
        ({"tls": {"clientCa": {"enabled": True}}}, ["tls.clientCa.enabled (mutual TLS) needs tls.enabled"]),
        ({"ingress": {"enabled": True}}, ["ingress.enabled needs ingress.host"]),
        (
            {"ingress": {"enabled": True, "host": "login.example.com", "https": False, "tlsSecretName": "t"}},
            ["ingress.tlsSecretName is set but ingress.https is false"],
        ),
    ],
)
def test_inconsistent_values_fail_with_a_message(override, fragments):
    expect_render_failure(default_with(override), *fragments)


def test_the_file_transport_needs_no_smtp_host():
    config = config_of(render(default_with({"mail": {"transport": "file", "smtp": {"host": ""}}})))
    assert config["mail"]["transport"] == "file"


# --- the schema -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ({"replicaCont": 1}, "additional properties 'replicaCont' not allowed"),
        ({"mail": {"smtp": {"hots": "x"}}}, "additional properties 'hots' not allowed"),
        ({"podSecurityContext": {"runAsUsr": 1}}, "additional properties 'runAsUsr' not allowed"),
        ({"affinity": {"nodeAfinity": {}}}, "additional properties 'nodeAfinity' not allowed"),
        ({"auth": {"apiKeys": [{"name": "w", "sha256": "ab" * 32, "scopes": ["links"], "scope": []}]}}, "'scope' not allowed"),
        ({"store": {"durability": "sometimes"}}, "/store/durability"),
        ({"store": {"retentionHours": 12}}, "/store/retentionHours"),
        ({"auth": {"apiKeys": [{"name": "w", "sha256": "not-hex", "scopes": ["links"]}]}}, "/auth/apiKeys/0/sha256"),
        ({"auth": {"apiKeys": [{"name": "w", "sha256": "ab" * 32, "scopes": ["everything"]}]}}, "/auth/apiKeys/0/scopes/0"),
        ({"serverKey": {"value": "short"}}, "/serverKey/value"),
        ({"mail": {"templates": {"bad id": {"subject": "s", "html": "h", "text": "t"}}}}, "invalid propertyName 'bad id'"),
        (
            {"mail": {"templates": {"w": {"subject": "s", "html": "h", "text": "t", "locales": {"de_CH": {}}}}}},
            "invalid propertyName 'de_CH'",
        ),
        ({"mail": {"defaultLocale": "english"}}, "/mail/defaultLocale"),
        ({"store": {"backend": "mysql"}}, "/store/backend"),
        ({"store": {"postgres": {"poolsize": 4}}}, "additional properties 'poolsize' not allowed"),
        ({"store": {"postgres": {"recheckMillis": 50}}}, "/store/postgres/recheckMillis"),
        ({"store": {"postgres": {"startupWaitSeconds": 3601}}}, "/store/postgres/startupWaitSeconds"),
        ({"autoscaling": {"enable": True}}, "additional properties 'enable' not allowed"),
        ({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone"}]}, "/topologySpreadConstraints/0"),
    ],
)
def test_the_schema_rejects_bad_values(override, where):
    values = default_with(override)
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as failure:
        chart.validate_schema(values)
    assert where in str(failure.value), str(failure.value)
    with pytest.raises(helm.HelmValuesError):
        render(values)


def test_the_schema_is_closed_at_every_object_level():
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                extra = node.get("additionalProperties")
                # Closed (false), or a map whose values have a schema (labels, templates, ...).
                if extra is not False and not isinstance(extra, dict):
                    open_objects.append(path)
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{path}/{index}")

    walk(schema, "")
    # Helm's `global` is shared with parent charts and cannot be closed.
    assert open_objects == ["/properties/global"], open_objects


def test_every_default_value_is_in_the_schema():
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(yaml.safe_load((CHART / "values.yaml").read_text()))


# --- config.toml ------------------------------------------------------------------------------


def test_config_toml_parses_and_uses_only_known_keys(scenario):
    name, rendered = scenario
    config = config_of(rendered)

    def check(table: dict[str, Any], section: str) -> None:
        unknown = set(table) - CONFIG_KEYS[section]
        assert not unknown, f"{name}: unknown keys in [{section or 'top level'}]: {unknown}"
        for key, value in table.items():
            child = f"{section}.{key}" if section else key
            if isinstance(value, dict):
                check(value, child)
            elif isinstance(value, list) and value and isinstance(value[0], dict):
                for item in value:
                    check(item, f"{child}[]")

    check(config, "")
    assert config["profile"] == "production"
    assert config["listen"] == "0.0.0.0:50051"
    assert config["metrics_listen"] == "0.0.0.0:9464"
    assert config["data_dir"] == "/var/lib/latchkey"
    assert config["server_key_file"] == "/etc/latchkey/secrets/server-key"
    assert config["log"] == {"format": "json", "level": scenario_values(name).get("log", {}).get("level", "info")}
    assert config["auth"]["required"] is True
    keys = scenario_values(name)["auth"]["apiKeys"]
    assert [
        {"name": k["name"], "sha256": k["sha256"], "scopes": k["scopes"]} for k in keys
    ] == config["auth"]["api_keys"]
    for section in ("links", "sessions", "store", "mail", "oauth"):
        assert section in config, section
    backend = scenario_values(name).get("store", {}).get("backend", "sled")
    assert config["store"]["backend"] == backend
    # Only the chosen backend's table: the other's keys would be dead settings.
    assert {"sled", "postgres"} & set(config["store"]) == {backend}, config["store"]
    if backend == "sled":
        assert config["store"]["sled"]["durability"] in ("fsync", "flush")
    else:
        assert config["store"]["postgres"]["url_file"] == "/etc/latchkey/database/url"
        assert "url" not in config["store"]["postgres"], "the URL stays in a Secret"
    assert isinstance(config["sessions"]["jwt_minutes"], int)


def test_default_config_has_the_expected_values():
    config = config_of(render_scenario("default"))
    assert config["issuer"] == "http://latchkey.identity.svc:9464"
    assert config["shutdown_delay_seconds"] == 5
    assert config["links"] == {"redirect_allow_list": [], "enchanted_expiration_minutes": 10}
    assert config["sessions"] == {
        "default_duration_minutes": 1440,
        "jwt_minutes": 5,
        "audience": "latchkey",
        "signing_key_rotation_days": 30,
    }
    assert config["store"] == {
        "backend": "sled",
        "retention_hours": 24,
        "sweep_interval_seconds": 60,
        "sled": {"cache_capacity_mib": 64, "durability": "fsync", "commit_linger_micros": 1000},
    }
    assert config["mail"]["transport"] == "smtp"
    assert config["mail"]["from"] == "latchkey <no-reply@localhost>"
    assert config["mail"]["smtp"] == {"host": "smtp.example.com", "tls": "starttls", "timeout_seconds": 15, "pool_size": 8}
    assert config["mail"]["rate_limit"] == {"burst": 5, "per_minute": 1}
    assert config["oauth"] == {"access_token_minutes": 60}
    assert "tls" not in config


def test_full_config_renders_every_value():
    values = scenario_values("full")
    config = config_of(render_scenario("full"))
    assert config["issuer"] == "https://auth.example.com"
    assert config["shutdown_delay_seconds"] == 15
    assert config["log"]["level"] == "info,latchkey=debug"
    assert config["links"] == {
        "default_redirect_url": "https://app.example.com/auth/callback",
        "redirect_allow_list": ["https://app.example.com/auth/", "https://staging.example.com:*/"],
        "login_magic_link_url": "https://app.example.com/auth/login",
        "signup_magic_link_url": "https://app.example.com/auth/signup",
        "enchanted_expiration_minutes": 15,
    }
    assert config["mail"]["product_name"] == 'Acme "Identity"', "quotes are escaped"
    assert config["mail"]["templates_dir"] == "/etc/latchkey/templates"
    assert config["mail"]["default_locale"] == "de"
    assert config["mail"]["smtp"] == {
        "host": "smtp.internal.example",
        "port": 2525,
        "tls": "starttls",
        "username": "latchkey",
        "password_file": "/etc/latchkey/secrets/smtp-password",
        "ca_file": "/etc/latchkey/smtp-ca.pem",
        "timeout_seconds": 30,
        "pool_size": 4,
    }
    assert config["oauth"]["clients"] == [
        {
            "client_id": c["clientId"],
            "name": c["name"],
            "redirect_uris": c["redirectUris"],
            "scopes": c["scopes"],
        }
        for c in values["oauth"]["clients"]
    ]
    assert config["store"]["sled"]["durability"] == "flush"
    assert "password" not in config["mail"]["smtp"], "the password stays in the Secret"


def test_tls_config_and_mounts():
    rendered = render_scenario("tls")
    assert config_of(rendered)["tls"] == {
        "cert_file": "/etc/latchkey/tls/tls.crt",
        "key_file": "/etc/latchkey/tls/tls.key",
        "client_ca_file": "/etc/latchkey/client-ca/ca.crt",
    }
    volumes = rendered.volumes
    assert volumes["tls"]["secret"]["secretName"] == "latchkey-tls"
    assert volumes["client-ca"]["secret"]["secretName"] == "latchkey-client-ca"
    mounts = {mount["name"]: mount["mountPath"] for mount in rendered.container["volumeMounts"]}
    assert mounts["tls"] == "/etc/latchkey/tls"
    assert mounts["client-ca"] == "/etc/latchkey/client-ca"
    without_mutual = render(support.merged(scenario_values("tls"), {"tls": {"clientCa": {"enabled": False}}}))
    assert "client_ca_file" not in config_of(without_mutual)["tls"]


# --- secrets ----------------------------------------------------------------------------------


def decoded_secret(rendered: support.Rendered) -> dict[str, str]:
    secret = rendered.one("Secret")
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def test_a_server_key_is_generated_when_none_exists():
    first = decoded_secret(render_scenario("default"))
    assert set(first) == {"server-key"}
    assert len(base64.b64decode(first["server-key"], validate=True)) == 32
    # Under `helm template` lookup finds nothing, so every render generates a new key: on a real
    # `helm upgrade` the key of the existing Secret is reused instead (see the chart README).
    assert decoded_secret(render_scenario("default"))["server-key"] != first["server-key"]
    secret = render_scenario("default").one("Secret")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_a_given_server_key_is_used_verbatim():
    key = "6hU6gyBESqFyE0sLvBHObN9WiXWO9P1lpXSVIuqJL7c"
    rendered = render(default_with({"serverKey": {"value": key, "keepOnUninstall": False}}))
    assert decoded_secret(rendered)["server-key"] == key
    assert "annotations" not in rendered.one("Secret")["metadata"]


def test_the_secret_template_reuses_an_existing_key_first():
    # lookup cannot be exercised offline; the template's order is checked on its source.
    source = (CHART / "templates" / "secret.yaml").read_text()
    lookup = source.index('lookup "v1" "Secret"')
    from_values = source.index("else if .Values.serverKey.value")
    generated = source.index("randBytes 32")
    assert lookup < from_values < generated


def test_smtp_password_lives_in_the_secret_and_is_read_from_a_file():
    rendered = render_scenario("tls")
    assert decoded_secret(rendered)["smtp-password"] == "not-a-real-password"
    volumes = rendered.volumes
    items = volumes["secrets"]["secret"]["items"]
    assert {"key": "smtp-password", "path": "smtp-password"} in items
    assert config_of(rendered)["mail"]["smtp"]["password_file"] == "/etc/latchkey/secrets/smtp-password"
    assert "not-a-real-password" not in rendered.config_toml


def test_an_existing_secret_replaces_the_chart_secret():
    rendered = render_scenario("smtp-existing-secret")
    assert rendered.maybe("Secret") == []
    volumes = rendered.volumes
    assert volumes["secrets"]["secret"] == {
        "secretName": "latchkey-secrets",
        "defaultMode": 0o440,
        "items": [
            {"key": "server-key", "path": "server-key"},
            {"key": "smtp-password", "path": "smtp-password"},
        ],
    }
    smtp = config_of(rendered)["mail"]["smtp"]
    assert smtp["password_file"] == "/etc/latchkey/secrets/smtp-password"
    assert smtp["tls"] == "tls"
    assert smtp["port"] == 465


# --- optional objects -------------------------------------------------------------------------


def test_service_monitor_and_network_policy_with_metrics_on():
    rendered = render_scenario("metrics-on")
    monitor = rendered.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {
        "port": "http-metrics",
        "path": "/metrics",
        "scheme": "http",
        "interval": "15s",
        "scrapeTimeout": "10s",
    }
    selector = monitor["spec"]["selector"]["matchLabels"]
    service = rendered.one("Service", "latchkey")
    headless = rendered.one("Service", "latchkey-headless")
    assert all(service["metadata"]["labels"].get(k) == v for k, v in selector.items())
    assert not all(headless["metadata"]["labels"].get(k) == v for k, v in selector.items()), "scraped once"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [support.NAMESPACE]}

    policy = rendered.one("NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"] == rendered.one("StatefulSet")["spec"]["selector"]["matchLabels"]
    grpc, http = policy["spec"]["ingress"]
    assert grpc["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert grpc["from"] == scenario_values("metrics-on")["networkPolicy"]["grpcFrom"]
    assert http["ports"] == [{"port": "http-metrics", "protocol": "TCP"}]
    assert http["from"] == scenario_values("metrics-on")["networkPolicy"]["httpFrom"]


def test_optional_objects_are_off_by_default():
    rendered = render_scenario("default")
    assert rendered.maybe("ServiceMonitor") == []
    assert rendered.maybe("NetworkPolicy") == []
    assert rendered.maybe("Ingress") == []
    assert config_of(rendered)["sign_in"] == {"accent_color": "#1f5fbf"}, "the pages' address follows the issuer"


def test_the_ingress_routes_only_the_public_paths_and_gives_the_issuer_and_pages_their_address():
    rendered = render_scenario("ingress")
    (ingress,) = rendered.maybe("Ingress")
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    assert spec["tls"] == [{"hosts": ["login.example.com"], "secretName": "login-example-com-tls"}]
    (rule,) = spec["rules"]
    assert rule["host"] == "login.example.com"
    service = {"name": "latchkey", "port": {"name": "http-metrics"}}
    assert rule["http"]["paths"] == [
        {"path": path, "pathType": "Prefix", "backend": {"service": service}} for path in ("/oauth", "/.well-known")
    ], "never /metrics, /healthz or /readyz"
    (api,) = [s for s in rendered.maybe("Service") if s["spec"].get("clusterIP") != "None"]
    assert "http-metrics" in {port["name"] for port in api["spec"]["ports"]}
    config = config_of(rendered)
    assert config["issuer"] == "https://login.example.com"
    assert config["sign_in"] == {
        "accent_color": "#0b6e4f",
        "product_name": "Acme",
        "logo_url": "https://cdn.example.com/acme.svg",
    }
    grafana, cli = config["oauth"]["clients"]
    assert grafana["client_secret_sha256"] == "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert grafana["post_logout_redirect_uris"] == ["https://grafana.example.com/login"]
    assert "client_secret_sha256" not in cli, "a public client"
    # An explicit issuer wins; the pages may have an address of their own; plain http is allowed
    # where TLS is not used at all.
    config = config_of(
        render(
            default_with(
                {
                    "issuer": "http://latchkey.identity.svc:9464",
                    "ingress": {"enabled": True, "host": "login.example.com", "https": False},
                    "signIn": {"publicUrl": "https://login.example.com"},
                }
            )
        )
    )
    assert config["issuer"] == "http://latchkey.identity.svc:9464"
    assert config["sign_in"]["public_url"] == "https://login.example.com"
    plain = config_of(render(default_with({"ingress": {"enabled": True, "host": "login.example.com", "https": False}})))
    assert plain["issuer"] == "http://login.example.com"


def test_pod_disruption_budget():
    budget = render_scenario("default").one("PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert render_scenario("full").one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 0
    assert render(default_with({"podDisruptionBudget": {"enabled": False}})).maybe("PodDisruptionBudget") == []


def test_custom_templates_are_mounted_file_by_file():
    rendered = render_scenario("full")
    data = rendered.one("ConfigMap")["data"]
    mounts = [m for m in rendered.container["volumeMounts"] if m["mountPath"].startswith("/etc/latchkey/templates/")]
    expected = {
        f"/etc/latchkey/templates/{template}/{part}"
        for template in ("welcome", "partner-signup", "welcome/de", "welcome/pt-BR")
        for part in ("subject.txt", "body.html", "body.txt")
    }
    assert {m["mountPath"] for m in mounts} == expected
    for mount in mounts:
        assert mount["subPath"] in data, mount
    assert data["template.welcome.subject.txt"] == "Welcome to {{ product }}, {{ first_name }}"
    assert data["template.welcome.de.subject.txt"] == "Willkommen bei {{ product }}, {{ first_name }}"


def test_image_reference():
    assert render_scenario("default").container["image"] == "latchkey:0.1.0"
    assert render_scenario("full").container["image"] == (
        "registry.example.com/identity/latchkey:0.1.0@sha256:" + "0" * 64
    )


def test_notes_show_a_grpcurl_call():
    notes = render_scenario("default").notes
    assert "kubectl --namespace identity port-forward svc/latchkey 50051:50051" in notes
    assert "grpcurl -plaintext -H 'authorization: Bearer <key>' localhost:50051 list" in notes
    tls_notes = render_scenario("tls").notes
    assert "-plaintext" not in tls_notes
    assert "-cert client.crt -key client.key" in tls_notes


# --- PostgreSQL: a Deployment of many replicas ------------------------------------------------


def test_postgres_renders_a_deployment_and_no_statefulset_or_volume_claim():
    rendered = render_scenario("postgres")
    assert rendered.kinds() == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount"]
    assert rendered.maybe("StatefulSet") == [] and rendered.maybe("PersistentVolumeClaim") == []
    deployment = rendered.one("Deployment")
    assert "volumeClaimTemplates" not in deployment["spec"]
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "latchkey",
        "app.kubernetes.io/instance": "latchkey",
    }
    volumes = rendered.volumes
    # The data directory holds nothing durable with PostgreSQL (only the file transport's mail).
    assert volumes["data"] == {"name": "data", "emptyDir": {"sizeLimit": "256Mi"}}
    assert not any("persistentVolumeClaim" in volume for volume in volumes.values())
    # Every replica shares the server key: the same Secret volume as with sled.
    assert volumes["secrets"]["secret"]["items"] == [{"key": "server-key", "path": "server-key"}]


def test_the_pod_template_is_the_same_for_both_workloads():
    sled = render_scenario("default")
    pg = render(default_with({"store": {"backend": "postgres", "postgres": {"url": "postgres://u:p@db/x"}}}))
    sled_pod, pg_pod = sled.pod_spec, pg.pod_spec
    # What PostgreSQL adds: the database volume, an emptyDir for the data directory, the spread.
    assert set(pg.volumes) - set(sled.volumes) == {"data", "database"}
    assert [m for m in pg.container["volumeMounts"] if m["name"] != "database"] == sled.container["volumeMounts"]
    for key in set(sled_pod) | set(pg_pod):
        if key not in ("volumes", "containers", "topologySpreadConstraints"):
            assert sled_pod.get(key) == pg_pod.get(key), key
    for key in set(sled.container) - {"volumeMounts"}:
        assert sled.container[key] == pg.container[key], key


@pytest.mark.parametrize(
    ("values", "replicas"),
    [
        (scenario_values("default"), 1),
        (scenario_values("postgres"), 3),
        (postgres_with({"replicaCount": 5}), 5),
        (postgres_with({"replicaCount": 1}), 1),
        (postgres_with({"replicaCount": 0}), 0),
    ],
)
def test_replica_count_defaults_to_one_with_sled_and_three_with_postgres(values, replicas):
    assert render(values).workload["spec"]["replicas"] == replicas


def test_postgres_has_a_pod_disruption_budget_over_its_pods():
    rendered = render_scenario("postgres")
    budget = rendered.one("PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == rendered.one("Deployment")["spec"]["selector"]
    assert render(postgres_with({"podDisruptionBudget": {"enabled": False}})).maybe("PodDisruptionBudget") == []


def test_the_autoscaler_is_off_by_default_and_owns_the_replica_count_when_on():
    assert render_scenario("postgres").maybe("HorizontalPodAutoscaler") == []
    rendered = render_scenario("postgres-hpa")
    autoscaler = rendered.one("HorizontalPodAutoscaler")
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "latchkey"}
    assert autoscaler["spec"]["minReplicas"] == 2
    assert autoscaler["spec"]["maxReplicas"] == 6
    assert autoscaler["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}
    ]
    # An explicit count would fight the autoscaler on every `helm upgrade`.
    assert "replicas" not in rendered.one("Deployment")["spec"]
    with_count = support.merged(scenario_values("postgres-hpa"), {"replicaCount": 4})
    assert "replicas" not in render(with_count).one("Deployment")["spec"]


def test_postgres_pods_spread_over_nodes_and_zones():
    rendered = render_scenario("postgres")
    selector = rendered.one("Deployment")["spec"]["selector"]
    assert rendered.pod_spec["topologySpreadConstraints"] == [
        {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": selector}
        for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
    ]
    # A given list replaces the default; a constraint without a selector gets the pod's.
    zone = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}
    assert render_scenario("postgres-hpa").pod_spec["topologySpreadConstraints"] == [zone | {"labelSelector": selector}]
    own = zone | {"maxSkew": 2, "labelSelector": {"matchLabels": {"team": "identity"}}}
    assert render(postgres_with({"topologySpreadConstraints": [own]})).pod_spec["topologySpreadConstraints"] == [own]
    assert "topologySpreadConstraints" not in render(postgres_with({"topologySpreadConstraints": []})).pod_spec
    # The single sled pod has nothing to spread.
    assert "topologySpreadConstraints" not in render_scenario("default").pod_spec


def test_postgres_config_renders_every_value():
    assert config_of(render_scenario("postgres"))["store"] == {
        "backend": "postgres",
        "retention_hours": 24,
        "sweep_interval_seconds": 60,
        "postgres": {
            "url_file": "/etc/latchkey/database/url",
            "pool_size": 16,
            "connect_timeout_seconds": 5,
            "statement_timeout_seconds": 5,
            "notify": True,
            "recheck_millis": 2000,
            "startup_wait_seconds": 60,
        },
    }
    assert config_of(render_scenario("postgres-hpa"))["store"]["postgres"] == {
        "url_file": "/etc/latchkey/database/url",
        "pool_size": 8,
        "connect_timeout_seconds": 3,
        "statement_timeout_seconds": 10,
        "ca_file": "/etc/latchkey/database-ca/ca.crt",
        "notify": False,
        "recheck_millis": 500,
        "startup_wait_seconds": 60,
    }


def mounted(rendered: support.Rendered, volume: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A pod volume without its name (its source), and the container's one mount of it."""
    (mount,) = [m for m in rendered.container["volumeMounts"] if m["name"] == volume]
    source = {key: value for key, value in rendered.volumes[volume].items() if key != "name"}
    return source, mount


def test_the_database_url_comes_from_an_existing_secret():
    rendered = render_scenario("postgres")
    source, mount = mounted(rendered, "database")
    assert source == {
        "secret": {"secretName": "latchkey-database", "defaultMode": 0o440, "items": [{"key": "url", "path": "url"}]}
    }
    assert mount == {"name": "database", "mountPath": "/etc/latchkey/database", "readOnly": True}
    assert "database-url" not in decoded_secret(rendered), "the chart keeps no copy"
    assert "database-ca" not in rendered.volumes


def test_the_database_url_from_values_lives_only_in_the_chart_secret():
    rendered = render_scenario("postgres-hpa")
    url = scenario_values("postgres-hpa")["store"]["postgres"]["url"]
    assert decoded_secret(rendered)["database-url"] == url
    source, _ = mounted(rendered, "database")
    assert source["secret"]["secretName"] == "latchkey"
    assert source["secret"]["items"] == [{"key": "database-url", "path": "url"}]
    # Nowhere in plain text: not in the ConfigMap, the pod, the notes or any other manifest.
    plain = [yaml.safe_dump(doc) for doc in rendered.manifests if doc["kind"] != "Secret"]
    plain.append(rendered.notes)
    plain.extend(text for file, text in rendered.files.items() if not file.endswith("secret.yaml"))
    for text in plain:
        assert PLACEHOLDER_DATABASE_PASSWORD not in text
    assert PLACEHOLDER_DATABASE_PASSWORD not in rendered.files["latchkey/templates/secret.yaml"], "base64 only"


def test_the_database_ca_is_mounted_from_a_secret_or_a_config_map():
    source, mount = mounted(render_scenario("postgres-hpa"), "database-ca")
    assert source == {
        "secret": {
            "secretName": "latchkey-database-ca",
            "defaultMode": 0o444,
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        }
    }
    assert mount == {"name": "database-ca", "mountPath": "/etc/latchkey/database-ca", "readOnly": True}
    from_config_map = render(postgres_with({"store": {"postgres": {"caConfigMap": "trust-bundle", "caKey": "bundle.pem"}}}))
    assert from_config_map.volumes["database-ca"]["configMap"] == {
        "name": "trust-bundle",
        "defaultMode": 0o444,
        "items": [{"key": "bundle.pem", "path": "bundle.pem"}],
    }
    assert config_of(from_config_map)["store"]["postgres"]["ca_file"] == "/etc/latchkey/database-ca/bundle.pem"


def test_postgres_values_change_nothing_with_sled():
    """The sled default stays as it was: PostgreSQL settings given with sled are not rendered."""
    values = default_with({"store": {"postgres": {"url": "postgres://u:secret-pw@db/x", "caSecret": "ca"}}})
    rendered = render(values)
    assert rendered.kinds() == render_scenario("default").kinds()
    assert "postgres" not in config_of(rendered)["store"]
    assert set(decoded_secret(rendered)) == {"server-key"}
    assert set(rendered.volumes) == {"config", "secrets", "tmp"}


def test_notes_name_the_workload():
    assert "installed as the StatefulSet latchkey" in render_scenario("default").notes
    notes = render_scenario("postgres").notes
    assert "installed as the Deployment latchkey in namespace identity over PostgreSQL (3 replicas)" in notes
    assert "Secret latchkey-database (key url)" in notes
    assert "(2 to 6 replicas, autoscaled on CPU)" in render_scenario("postgres-hpa").notes


@pytest.mark.parametrize(
    ("values", "fragments"),
    [
        (default_with({"autoscaling": {"enabled": True}}), ["autoscaling.enabled needs store.backend=postgres"]),
        (default_with({"replicaCount": 3}), ["replicaCount is 3", "set store.backend=postgres"]),
        (
            default_with({"store": {"backend": "postgres"}}),
            ["store.backend postgres needs the database URL", "store.postgres.existingSecret", "store.postgres.url"],
        ),
        (
            postgres_with({"store": {"postgres": {"url": "postgres://u:leak-me@db/x"}}}),
            ["store.postgres.existingSecret and store.postgres.url are both set"],
        ),
        (
            default_with(
                {
                    "existingSecret": "latchkey-secrets",
                    "store": {"backend": "postgres", "postgres": {"url": "postgres://u:leak-me@db/x"}},
                }
            ),
            ["store.postgres.url and existingSecret are both set"],
        ),
        (
            postgres_with({"store": {"postgres": {"caSecret": "a", "caConfigMap": "b"}}}),
            ["store.postgres.caSecret and store.postgres.caConfigMap are both set"],
        ),
        (
            postgres_with({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}),
            ["autoscaling.minReplicas (5) is above autoscaling.maxReplicas (2)"],
        ),
        (
            postgres_with({"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}}),
            ["autoscaling.enabled needs resources.requests.cpu"],
        ),
    ],
)
def test_inconsistent_store_values_fail_with_a_message(values, fragments):
    message = expect_render_failure(values, *fragments)
    assert "leak-me" not in message, "no message quotes the database URL"


# --- documentation ----------------------------------------------------------------------------


def value_paths(node: Any, prefix: str = "") -> list[str]:
    """Paths of every leaf of values.yaml; empty maps and lists are leaves."""
    if isinstance(node, dict) and node:
        paths = []
        for key, child in node.items():
            paths.extend(value_paths(child, f"{prefix}.{key}" if prefix else key))
        return paths
    return [prefix]


def test_the_readme_documents_every_value():
    readme = (CHART / "README.md").read_text()
    table = readme.split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` \|", table, flags=re.MULTILINE))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [path for path in value_paths(values) if path not in documented]
    assert not missing, f"values missing from the README table: {missing}"
    defaults = set(value_paths(values))
    stale = [
        path
        for path in documented
        if path not in defaults and not any(path.startswith(f"{d}.") or d.startswith(f"{path}.") for d in defaults)
    ]
    assert not stale, f"README rows for values that do not exist: {stale}"


def test_every_scenario_is_documented_in_the_readme():
    readme = (CHART / "README.md").read_text()
    for name in ALL_SCENARIOS:
        assert f"ci/{name}-values.yaml" in readme, name


# --- the real binary --------------------------------------------------------------------------


def with_database(
    name: str, rendered: support.Rendered, url: str, secrets: dict[str, dict[str, str]]
) -> support.Rendered:
    """Points a PostgreSQL scenario at the test database `url` the way an operator would: in the
    Secret its `database` volume mounts. The chart's own Secret (from `store.postgres.url`) is
    rendered again with the URL; an existing Secret is added to `secrets`, with the trailing
    newline `kubectl create secret --from-file` would keep."""
    source = rendered.volumes["database"]["secret"]
    if source["secretName"] in {secret["metadata"]["name"] for secret in rendered.maybe("Secret")}:
        return render_scenario(name, {"store": {"postgres": {"url": url}}})
    (item,) = source["items"]
    secrets[source["secretName"]] = {item["key"]: f"{url}\n"}
    return rendered


@pytest.mark.parametrize("name", ALL_SCENARIOS)
def test_the_binary_accepts_the_rendered_config(name, tmp_path, request):
    """The pod's files are laid out as the kubelet would (from the rendered ConfigMap and Secrets),
    the config's absolute paths are pointed at them, and the real binary must serve, answer the
    HTTP paths the probes and the ServiceMonitor use (and /readyz: health SERVING), and stop cleanly
    on SIGTERM. PostgreSQL scenarios run against a real PostgreSQL, each in a schema of its own,
    with the URL read from the mounted Secret (`url_file`); with a database CA, over TLS only."""
    rendered = render_scenario(name)
    secrets = dict(EXTERNAL_SECRETS)
    leaks = [value.strip() for value in EXTERNAL_SECRETS["latchkey-secrets"].values()]
    leaks.append(EXTERNAL_SECRETS["latchkey-tls"]["tls.key"].splitlines()[1])
    with contextlib.ExitStack() as stack:
        database = schema = None
        if is_postgres(rendered):
            over_tls = "ca_file" in config_of(rendered)["store"]["postgres"]
            database = request.getfixturevalue("tls_postgres" if over_tls else "postgres")
            schema, url = stack.enter_context(database.schema())
            rendered = with_database(name, rendered, url, secrets)
            leaks.extend([url, database.password])
        root = tmp_path / "pod"
        support.materialise_pod(rendered, root, secrets)
        config_file = tmp_path / "config.toml"
        config_file.write_text(support.rebase_paths(rendered.config_toml, root))
        http_paths = {"/.well-known/jwks.json", "/.well-known/openid-configuration", "/readyz"}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if "httpGet" in rendered.container[probe]:
                http_paths.add(rendered.container[probe]["httpGet"]["path"])
        for monitor in rendered.maybe("ServiceMonitor"):
            http_paths.update(endpoint["path"] for endpoint in monitor["spec"]["endpoints"])
        served = support.serve_until_ready(config_file, root / "var/lib/latchkey", tuple(sorted(http_paths)))
        stored_tables = database.tables(schema) if database else []
    assert served.exit_code == 0, served.stderr
    assert served.other_lines == [], "every log line is JSON (log.format = json)"
    serving = next(r for r in served.json_lines if r.get("fields", {}).get("message") == "latchkey is serving")
    assert serving["level"] == "INFO"
    assert serving["fields"]["tls"] == ("on" if config_of(rendered).get("tls") else "off")
    assert serving["fields"]["mutual_tls"] == ("client_ca_file" in config_of(rendered).get("tls", {}))
    for path, (status, body) in served.http.items():
        assert status == 200, (path, status, body)
    if "/metrics" in served.http:
        assert "# TYPE" in served.http["/metrics"][1]
    assert any(r.get("fields", {}).get("message") == "latchkey stopped cleanly" for r in served.json_lines), served.stderr
    if database:
        assert stored_tables, "the migrations made the store's tables in the test's schema"
        where = "PostgreSQL over TLS only (the mounted CA verified it)" if over_tls else "PostgreSQL"
    else:
        assert any((root / "var/lib/latchkey").iterdir()), "the store lives on the data volume"
        where = "sled"
    # The secrets the pod was given never reach the logs.
    for secret in rendered.maybe("Secret"):
        leaks.extend(base64.b64decode(v).decode().strip() for v in secret["data"].values())
    for secret in leaks:
        assert secret not in served.stderr
    support.SERVED[name] = (
        f"served on {where} (GET {', '.join(sorted(served.http))}: 200), "
        "exit 0 on SIGTERM"
    )


def test_the_binary_refuses_a_config_the_chart_must_not_produce(tmp_path):
    """Proves the acceptance test above would notice a bad config: an unknown key stops start-up."""
    rendered = render_scenario("default")
    root = tmp_path / "pod"
    support.materialise_pod(rendered, root, EXTERNAL_SECRETS)
    config_file = tmp_path / "config.toml"
    config_file.write_text(support.rebase_paths(rendered.config_toml, root).replace("[store]", "[store]\ncache_capacity = 5"))
    with pytest.raises(AssertionError, match="exited with 2 before serving(.|\n)*cache_capacity"):
        support.serve_until_ready(config_file, root / "var/lib/latchkey")


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == ">=1.27.0-0"
    assert Path(CHART / "values.schema.json").is_file()
