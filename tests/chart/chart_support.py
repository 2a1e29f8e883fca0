"""Helpers for the chart tests: rendering with Helm's Go SDK (helm-python-sdk, no helm binary),
building the files a pod would see from the rendered manifests, and running the real binary."""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "latchkey"
CI_DIR = CHART / "ci"
RELEASE = "latchkey"
NAMESPACE = "identity"

# scenario -> (manifests validated, custom resources checked by field, Kubernetes versions)
VALIDATED: dict[str, tuple[int, int, list[str]]] = {}
# scenario -> what the real binary did with the rendered config
SERVED: dict[str, str] = {}


def fail_on_skips(session: Any, exitstatus: int, suite: str) -> None:
    """For `pytest_sessionfinish`: these suites never skip, so a skipped or xfailed test fails the
    run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    dodged = len(reporter.stats.get("skipped", [])) + len(reporter.stats.get("xfailed", []))
    if dodged and exitstatus == 0:
        reporter.write_line(f"{dodged} test(s) skipped: {suite} must not skip", red=True)
        session.exitstatus = 1


def scenarios() -> dict[str, Path]:
    """Every `ci/<name>-values.yaml`, by name."""
    return {
        path.name.removesuffix("-values.yaml"): path
        for path in sorted(CI_DIR.glob("*-values.yaml"))
    }


def scenario_values(name: str) -> dict[str, Any]:
    return yaml.safe_load(scenarios()[name].read_text()) or {}


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` deep-merged over a copy of `base` (as Helm merges several values files)."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


@dataclass
class Rendered:
    """One rendering of the chart."""

    files: dict[str, str]

    @property
    def manifests(self) -> list[dict[str, Any]]:
        docs = []
        for name, text in sorted(self.files.items()):
            if not name.endswith((".yaml", ".yml")):
                continue
            docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
        return docs

    @property
    def notes(self) -> str:
        return next(text for name, text in self.files.items() if name.endswith("NOTES.txt"))

    def kinds(self) -> list[str]:
        return sorted(doc["kind"] for doc in self.manifests)

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [
            doc
            for doc in self.manifests
            if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
        ]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def maybe(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.manifests if doc["kind"] == kind]

    def template_text(self, template: str) -> str:
        return self.files[f"latchkey/templates/{template}"]

    @property
    def config_toml(self) -> str:
        return self.one("ConfigMap")["data"]["config.toml"]

    @property
    def workload(self) -> dict[str, Any]:
        """The one workload: the StatefulSet (sled) or the Deployment (PostgreSQL), never both."""
        found = self.maybe("StatefulSet") + self.maybe("Deployment")
        assert len(found) == 1, f"expected one StatefulSet or Deployment, found {self.kinds()}"
        return found[0]

    @property
    def pod_spec(self) -> dict[str, Any]:
        return self.workload["spec"]["template"]["spec"]

    @property
    def volumes(self) -> dict[str, dict[str, Any]]:
        """The pod's volumes, by name."""
        return {volume["name"]: volume for volume in self.pod_spec.get("volumes", [])}

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod_spec["containers"]
        assert len(containers) == 1
        return containers[0]


def render(values: dict[str, Any] | None) -> Rendered:
    """Renders the chart offline as `helm install` would (schema checked first); `lookup` finds
    nothing, as under `helm template`."""
    with helm.Chart.load(CHART) as chart:
        return Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True))


def render_scenario(name: str, override: dict[str, Any] | None = None) -> Rendered:
    return render(merged(scenario_values(name), override or {}))


# --- the pod's files, as the kubelet would lay them out -------------------------------------


def _write_atomic_volume(target: Path, files: dict[str, bytes], modes: dict[str, int]) -> None:
    """A configMap or secret volume as the kubelet's atomic writer lays it out: the files live in a
    timestamped hidden folder, `..data` points at it, and each top-level entry is a symlink
    through `..data`. Each file gets its mode (the item's `mode`, else the volume's `defaultMode`,
    else Kubernetes' 0644)."""
    stamp = target / "..2026_01_01_00_00_00.000000000"
    for relative, content in files.items():
        path = stamp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(modes[relative])
    (target / "..data").symlink_to(stamp.name)
    for top in {relative.split("/")[0] for relative in files}:
        (target / top).symlink_to(f"..data/{top}")


def materialise_pod(rendered: Rendered, root: Path, external_secrets: dict[str, dict[str, str]]) -> None:
    """Writes under `root` what the container would see at its mount paths, from the rendered
    ConfigMap and Secret (or `external_secrets` for Secrets the chart does not create)."""
    configmaps = {doc["metadata"]["name"]: doc.get("data", {}) for doc in rendered.maybe("ConfigMap")}
    secrets = {
        doc["metadata"]["name"]: {
            key: base64.b64decode(value).decode() for key, value in doc.get("data", {}).items()
        }
        for doc in rendered.maybe("Secret")
    }
    secrets.update(external_secrets)
    claims = {claim["metadata"]["name"] for claim in rendered.workload["spec"].get("volumeClaimTemplates", [])}
    volumes = rendered.volumes
    for mount in rendered.container["volumeMounts"]:
        target = root / mount["mountPath"].lstrip("/")
        if mount["name"] in claims:
            target.mkdir(parents=True, exist_ok=True)
            continue
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)
            continue
        if "configMap" in volume:
            source = volume["configMap"]
            data = configmaps[source["name"]]
        elif "secret" in volume:
            source = volume["secret"]
            assert source["secretName"] in secrets, f"no Secret {source['secretName']} for the test"
            data = secrets[source["secretName"]]
        else:
            raise AssertionError(f"unexpected volume {volume}")
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        files = {}
        modes = {}
        for item in items:
            assert item["key"] in data, f"volume {mount['name']}: key {item['key']} is missing"
            files[item["path"]] = data[item["key"]].encode()
            modes[item["path"]] = item.get("mode", source.get("defaultMode", 0o644))
        if "subPath" in mount:
            assert mount["subPath"] in files, f"subPath {mount['subPath']} is not in the volume"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(files[mount["subPath"]])
            target.chmod(modes[mount["subPath"]])
        else:
            target.mkdir(parents=True, exist_ok=True)
            _write_atomic_volume(target, files, modes)


def rebase_paths(config_toml: str, root: Path) -> str:
    """Points every absolute path of the rendered config into `root`."""
    for prefix in ('"/etc/latchkey', '"/var/lib/latchkey'):
        config_toml = config_toml.replace(prefix, f'"{root}{prefix[1:]}')
    return config_toml


# --- PostgreSQL -----------------------------------------------------------------------------

POSTGRES_SCRIPT = REPO / "scripts" / "postgres"


@dataclass
class Postgres:
    """A PostgreSQL server whose database (`url`) the tests make schemas in. `directory` is set when
    the tests started it themselves (scripts/postgres), and then `stop` stops it."""

    url: str
    directory: Path | None = None

    @property
    def password(self) -> str:
        return urllib.parse.urlsplit(self.url).password or ""

    def psql(self, sql: str) -> str:
        result = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", self.url, "-c", sql],
            capture_output=True,
            text=True,
            env={**os.environ, "PGOPTIONS": "--client-min-messages=warning"},
        )
        assert result.returncode == 0, f"psql failed on {sql!r}: {result.stderr}"
        return result.stdout.strip()

    @contextlib.contextmanager
    def schema(self) -> Iterator[tuple[str, str]]:
        """A new schema of its own (so tests never share state, however often they run): yields its
        name and the URL whose `search_path` is it; dropped afterwards."""
        name = f"chart_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE SCHEMA {name}")
        separator = "&" if "?" in self.url else "?"
        try:
            yield name, f"{self.url}{separator}options=-c%20search_path%3D{name}"
        finally:
            self.psql(f"DROP SCHEMA {name} CASCADE")

    def tables(self, schema: str) -> list[str]:
        listed = self.psql(
            f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}' ORDER BY 1"
        )
        return listed.splitlines()

    def stop(self) -> None:
        if self.directory is not None:
            subprocess.run(["bash", str(POSTGRES_SCRIPT), "stop", str(self.directory)], check=True)
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def start_postgres(tls_from: Path | None = None) -> Postgres:
    """Starts a throwaway PostgreSQL with scripts/postgres (as the postgres user, on a free loopback
    port). With `tls_from` (a folder holding tls.crt and tls.key) it then serves that certificate and
    refuses every connection that is not TLS (`hostssl` only)."""
    # Not under pytest's tmp_path: the postgres user must be able to reach the folder.
    directory = Path(tempfile.mkdtemp(prefix="latchkey-chart-pg."))
    started = subprocess.run(
        ["bash", str(POSTGRES_SCRIPT), "start", str(directory)], capture_output=True, text=True
    )
    server = Postgres(started.stdout.strip(), directory)
    try:
        assert started.returncode == 0, f"scripts/postgres start failed: {started.stderr}"
        if tls_from is not None:
            _require_tls(directory, tls_from)
    except BaseException:
        server.stop()
        raise
    return server


def _require_tls(directory: Path, tls_from: Path) -> None:
    subprocess.run(["bash", str(POSTGRES_SCRIPT), "stop", str(directory)], check=True)
    data = directory / "data"
    for source, target in (("tls.crt", "server.crt"), ("tls.key", "server.key")):
        shutil.copyfile(tls_from / source, data / target)
        shutil.chown(data / target, user="postgres")
        (data / target).chmod(0o600)
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
    hba = data / "pg_hba.conf"
    lines = hba.read_text().splitlines()
    hba.write_text("".join(f"hostssl{line[4:]}\n" if line.startswith("host ") else f"{line}\n" for line in lines))
    subprocess.run(["bash", str(POSTGRES_SCRIPT), "resume", str(directory)], check=True)


# --- the real binary ------------------------------------------------------------------------


def binary() -> Path:
    path = Path(os.environ.get("CHART_TEST_LATCHKEY_BINARY", REPO / "target" / "debug" / "latchkey"))
    assert path.is_file(), (
        f"{path} does not exist: build it with `cargo build --bin latchkey` (scripts/test-chart does)"
    )
    return path


@dataclass
class Served:
    json_lines: list[dict[str, Any]]
    other_lines: list[str]
    stderr: str
    exit_code: int
    # path -> (HTTP status, body) for the GETs made while the server was serving
    http: dict[str, tuple[int, str]]


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has installed its SIGTERM handler (bit 15 of SigCgt)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def _get(address: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def serve_until_ready(
    config_file: Path, data_dir: Path, http_paths: tuple[str, ...] = (), timeout: float = 60.0
) -> Served:
    """Starts `latchkey serve` with the config, waits for its "latchkey is serving" log line, GETs
    `http_paths` on its HTTP port, sends SIGTERM and waits for it to exit."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith("LATCHKEY_") and key != "RUST_LOG"
    }
    # The rendered delay (routing stops first in Kubernetes) only slows the test down.
    env["LATCHKEY_SHUTDOWN_DELAY_SECONDS"] = "0"
    process = subprocess.Popen(
        [
            str(binary()),
            "serve",
            "--config",
            str(config_file),
            "--data-dir",
            str(data_dir),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    seen: list[str] = []
    parsed: list[dict[str, Any]] = []
    other: list[str] = []

    def take(line: str) -> dict[str, Any] | None:
        seen.append(line)
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            other.append(line)
            return None
        parsed.append(record)
        return record

    deadline = time.monotonic() + timeout
    serving: dict[str, Any] | None = None
    http: dict[str, tuple[int, str]] = {}
    try:
        while serving is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("latchkey did not log 'latchkey is serving' in time:\n" + "".join(seen))
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                process.wait(timeout=10)
                raise AssertionError(
                    f"latchkey exited with {process.returncode} before serving:\n" + "".join(seen)
                )
            record = take(line)
            if record and record.get("fields", {}).get("message") == "latchkey is serving":
                serving = record
        for path in http_paths:
            http[path] = _get(serving["fields"]["http"], path)
        # The server logs "serving" just before it installs its signal handlers; a SIGTERM in
        # between would kill it outright. Wait until the handler is there.
        while not _catches_sigterm(process.pid):
            if time.monotonic() > deadline:
                raise AssertionError("latchkey never installed a SIGTERM handler")
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=10)
    while True:
        try:
            line = lines.get_nowait()
        except queue.Empty:
            break
        if line is None:
            break
        take(line)
    return Served(parsed, other, "".join(seen), exit_code, http)
