"""The container image, built offline by scripts/image and run by podman the way the Helm chart's pod
runs it: non-root, read-only root filesystem, no capabilities, no-new-privileges, the data directory
on a volume, and the chart's rendered config and Secret mounted where the chart mounts them. The
`podman run` and `podman stop` commands are read from docs/operations.md's container section, so the
docs show what was run. Run by scripts/test-image; never skips."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import chart_support as support

REPO = support.REPO
GRPCURL = REPO / ".venv" / "bin" / "grpcurl"
API_KEY = "ci-web-key"  # ci/default-values.yaml has its digest
IMAGE = "localhost/latchkey:test"
REDIRECT = "https://app.example.com/auth/callback"
# An operator's values on top of the default scenario: where links lead.
VALUES = {"links": {"defaultRedirectUrl": REDIRECT, "redirectAllowList": ["https://app.example.com/auth/"]}}
NONROOT = 65532
FACTS: dict[str, str] = {}


# --- podman through scripts/containers, in storage of this run's own -----------------------------


@dataclass
class Containers:
    root: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "LATCHKEY_CONTAINER_ROOT": str(self.root)}

    def run(self, tool: str, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["bash", str(REPO / "scripts" / "containers"), tool, *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
        )
        if check:
            assert result.returncode == 0, f"{tool} {shlex.join(args)} failed:\n{result.stderr}"
        return result

    def podman(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.run("podman", *args, check=check, timeout=timeout)

    def inspect(self, name: str) -> dict[str, Any]:
        return json.loads(self.podman("inspect", name).stdout)[0]

    def logs(self, name: str) -> str:
        result = self.podman("logs", name)
        return result.stdout + result.stderr


@pytest.fixture(scope="module")
def containers() -> Iterator[Containers]:
    root = Path(tempfile.mkdtemp(prefix="latchkey-image."))
    found = Containers(root)
    try:
        started = time.monotonic()
        built = subprocess.run(
            ["bash", str(REPO / "scripts" / "image"), str(support.binary()), IMAGE],
            capture_output=True,
            text=True,
            env=found.env(),
            timeout=600,
        )
        assert built.returncode == 0, f"scripts/image failed:\n{built.stdout}\n{built.stderr}"
        FACTS["build"] = f"scripts/image {support.binary().relative_to(REPO)}: {time.monotonic() - started:.1f} s"
        yield found
    finally:
        found.podman("rm", "--all", "--force", "--time", "0", check=False)
        shutil.rmtree(root, ignore_errors=True)


# --- the commands docs/operations.md shows ------------------------------------------------------


def readme_command(prefix: str) -> list[str]:
    """The command in docs/operations.md that starts with `prefix`, continuation lines joined, split as the shell
    would (quotes removed; `$POD` left for the caller)."""
    text = (REPO / "docs" / "operations.md").read_text()
    match = re.search(rf"^{re.escape(prefix)}(?:.*\\\n)*.*$", text, re.MULTILINE)
    assert match, f"docs/operations.md shows no `{prefix}` command"
    return shlex.split(match.group(0).replace("\\\n", " "), comments=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Pod:
    """One run of the documented `podman run` for a pod whose files are under `root`."""

    name: str
    root: Path
    grpc: str
    http: str
    argv: list[str]


def run_command(pod_root: Path, name: str, extra_volume_option: str = "") -> Pod:
    """The documented `podman run`, for this pod: its files, a name and free loopback ports of its own,
    the test image."""
    argv = readme_command("scripts/containers podman run")[2:]
    ports: dict[int, int] = {}
    result = []
    for index, arg in enumerate(argv):
        before = argv[index - 1] if index else ""
        if before == "--name":
            arg = name
        elif before == "-p":
            address, _host_port, container_port = arg.split(":")
            ports[int(container_port)] = free_port()
            arg = f"{address}:{ports[int(container_port)]}:{container_port}"
        elif before == "-v" and extra_volume_option and arg.endswith(":/var/lib/latchkey"):
            arg += f":{extra_volume_option}"
        elif index == len(argv) - 1:
            arg = IMAGE
        result.append(arg.replace("$POD", str(pod_root)))
    assert set(ports) == {50051, 9464}, f"the documented command publishes {sorted(ports)}"
    return Pod(name, pod_root, f"127.0.0.1:{ports[50051]}", f"127.0.0.1:{ports[9464]}", result)


def lay_out_pod(rendered: support.Rendered, root: Path) -> None:
    """The files the kubelet would give the pod (tests/chart's materialise_pod), with what the pod's
    `fsGroup` does to volumes: group 65532, group-readable (and -writable where the volume is), and
    emptyDir world-writable."""
    fs_group = rendered.pod_spec["securityContext"]["fsGroup"]
    support.materialise_pod(rendered, root, {})
    for path in [root / "etc/latchkey/secrets", root / "var/lib/latchkey"]:
        for entry in [path, *path.rglob("*")]:
            os.chown(entry, 0, fs_group, follow_symlinks=False)
    (root / "var/lib/latchkey").chmod(0o2775)
    (root / "tmp").chmod(0o777)


# --- calls ---------------------------------------------------------------------------------------


def grpcurl(address: str, method: str, request: dict[str, Any] | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRPCURL), "-plaintext", "-H", f"authorization: Bearer {API_KEY}", "-d", json.dumps(request or {}), address, method],
        capture_output=True,
        text=True,
        timeout=30,
    )


def grpc(address: str, method: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
    result = grpcurl(address, method, request)
    assert result.returncode == 0, f"{method}: {result.stdout}{result.stderr}"
    return json.loads(result.stdout)


def grpc_error(address: str, method: str, request: dict[str, Any]) -> str:
    result = grpcurl(address, method, request)
    assert result.returncode != 0, f"{method} succeeded: {result.stdout}"
    return result.stdout + result.stderr


def http_get(address: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def token_of(link: str) -> str:
    match = re.search(r"[?&]token=([^&]+)", link)
    assert match, link
    return match.group(1)


# --- the container's life ------------------------------------------------------------------------


def start(containers: Containers, pod: Pod, timeout: float = 120) -> float:
    """Runs the pod and waits for its "latchkey is serving" log line (following the log, no polling);
    returns the seconds from `podman run` to that line."""
    started = time.monotonic()
    containers.podman(*pod.argv)
    follow = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "containers"), "podman", "logs", "--follow", pod.name],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=containers.env(),
    )
    timer = threading.Timer(timeout, follow.kill)
    timer.start()
    seen = []
    try:
        assert follow.stdout is not None
        for line in follow.stdout:
            seen.append(line)
            if '"latchkey is serving"' in line:
                return time.monotonic() - started
        raise AssertionError(f"{pod.name} stopped (or {timeout} s passed) before serving:\n{''.join(seen)}")
    finally:
        timer.cancel()
        follow.kill()
        follow.wait()


def wait_for_sigterm_handler(containers: Containers, name: str) -> None:
    """The binary is PID 1 in the container, and PID 1 ignores a signal it has no handler for: the
    server logs "serving" just before it installs its handlers, so wait until SIGTERM is caught."""
    pid = containers.inspect(name)["State"]["Pid"]
    deadline = time.monotonic() + 30
    while not support._catches_sigterm(pid):
        assert time.monotonic() < deadline, "latchkey never installed a SIGTERM handler"
        time.sleep(0.01)


def stop(containers: Containers, pod: Pod, grace: int) -> tuple[int, float, list[int]]:
    """The documented `podman stop` (SIGTERM, SIGKILL after the grace period, as the kubelet does),
    watching /readyz meanwhile; returns the exit code, the seconds it took and the /readyz statuses
    seen while draining."""
    argv = readme_command("scripts/containers podman stop")[2:]
    argv[-1] = pod.name
    wait_for_sigterm_handler(containers, pod.name)
    started = time.monotonic()
    stopping = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "containers"), "podman", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=containers.env(),
    )
    statuses = []
    while stopping.poll() is None:
        try:
            statuses.append(http_get(pod.http, "/readyz")[0])
        except OSError:
            pass  # the port is closed: the drain is over
    took = time.monotonic() - started
    assert stopping.returncode == 0, stopping.stderr.read() if stopping.stderr else ""
    state = containers.inspect(pod.name)["State"]
    assert state["Status"] == "exited", state
    assert took < grace + 5, f"podman stop took {took:.1f} s with a {grace} s grace period"
    return state["ExitCode"], took, statuses


# --- tests ---------------------------------------------------------------------------------------


def dockerfile_instructions() -> dict[str, list[str]]:
    """The final stage's instructions of the Dockerfile, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    final_stage = text[text.rindex("\nFROM ") :]
    found: dict[str, list[str]] = {}
    for line in final_stage.splitlines():
        if line.strip() and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.setdefault(keyword, []).append(rest.strip())
    return found


def test_the_image_has_the_dockerfile_layout(containers):
    """scripts/image and the Dockerfile describe the same image: user, entrypoint, command, ports,
    labels; the files of distroless' nonroot image that latchkey needs; the data directory."""
    docker = dockerfile_instructions()
    config = containers.inspect(IMAGE)["Config"]
    assert config["User"] == docker["USER"][0] == f"{NONROOT}:{NONROOT}"
    assert config["Entrypoint"] == json.loads(docker["ENTRYPOINT"][0])
    assert config["Cmd"] == json.loads(docker["CMD"][0])
    assert sorted(config["ExposedPorts"]) == sorted(docker["EXPOSE"][0].split())
    labels = dict(shlex.split(pair)[0].split("=", 1) for pair in re.findall(r'\S+="[^"]*"', docker["LABEL"][0]))
    assert labels and labels.items() <= config["Labels"].items()

    mounted = Path(containers.podman("image", "mount", IMAGE).stdout.strip())
    try:
        binary = mounted / "usr/local/bin/latchkey"
        assert binary.stat().st_mode & 0o777 == 0o755
        assert binary.read_bytes() == support.binary().read_bytes()
        data = (mounted / "var/lib/latchkey").stat()
        # The Dockerfile: `install -d -m 0750`, then COPY --chown=65532:65532.
        assert (data.st_uid, data.st_gid, stat.S_IMODE(data.st_mode)) == (NONROOT, NONROOT, 0o750)
        assert "install -d -m 0750 /out/var/lib/latchkey" in (REPO / "Dockerfile").read_text()
        assert f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin" in (mounted / "etc/passwd").read_text().splitlines()
        assert f"nonroot:x:{NONROOT}:" in (mounted / "etc/group").read_text().splitlines()
        assert (mounted / "etc/ssl/certs/ca-certificates.crt").read_text().count("BEGIN CERTIFICATE") > 100
        assert stat.S_IMODE((mounted / "tmp").stat().st_mode) == 0o1777
        assert (mounted / "lib64/ld-linux-x86-64.so.2").is_file()
        assert not (mounted / "bin/sh").exists(), "no shell, as in distroless"
    finally:
        containers.podman("image", "unmount", IMAGE)
    FACTS["size"] = f"{int(containers.inspect(IMAGE)['Size']) / 1e6:.0f} MB with the debug binary"


def test_the_run_command_applies_the_charts_pod_settings():
    """The documented `podman run` is what the chart's pod spec asks of a container runtime."""
    rendered = support.render_scenario("default", VALUES)
    security = rendered.container["securityContext"]
    argv = readme_command("scripts/containers podman run")
    assert security["runAsUser"] == security["runAsGroup"] == NONROOT
    assert argv[argv.index("--user") + 1] == f"{NONROOT}:{NONROOT}"
    assert security["readOnlyRootFilesystem"] is True and "--read-only" in argv
    assert security["capabilities"]["drop"] == ["ALL"] and argv[argv.index("--cap-drop") + 1] == "ALL"
    assert security["allowPrivilegeEscalation"] is False
    assert argv[argv.index("--security-opt") + 1] == "no-new-privileges"
    # podman's default seccomp profile is the runtime default.
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in rendered.container["volumeMounts"]}
    volumes = [argv[i + 1].split(":") for i, arg in enumerate(argv) if arg == "-v"]
    assert {v[1]: v[2:] == ["ro"] for v in volumes} == mounts
    assert all(v[0] == f"$POD{v[1]}" for v in volumes), "each host path is the pod's file at the same path"
    assert [p["containerPort"] for p in rendered.container["ports"]] == [50051, 9464]
    grace = rendered.pod_spec["terminationGracePeriodSeconds"]
    stop_argv = readme_command("scripts/containers podman stop")
    assert stop_argv[stop_argv.index("--time") + 1] == str(grace)


def test_the_image_runs_as_the_chart_runs_it(containers, tmp_path):
    """Starts, health SERVING, a login link issued and verified through the published port,
    /metrics and /readyz; SIGTERM drains and exits 0 within the grace period; a restart on the same
    volume keeps users, sessions and an unused link."""
    rendered = support.render_scenario("default", VALUES)
    grace = rendered.pod_spec["terminationGracePeriodSeconds"]
    delay = tomllib.loads(rendered.config_toml)["shutdown_delay_seconds"]
    root = tmp_path / "pod"
    lay_out_pod(rendered, root)

    pod = run_command(root, "latchkey-image-test")
    start_seconds = start(containers, pod)
    assert grpc(pod.grpc, "grpc.health.v1.Health/Check") == {"status": "SERVING"}
    ann = grpc(pod.grpc, "latchkey.v1.Passwordless/IssueLoginLink", {"email": "ann@example.com", "first_name": "Ann", "last_name": "Lee"})
    assert ann["userCreated"] is True and ann["link"].startswith(f"{REDIRECT}?")
    bob = grpc(pod.grpc, "latchkey.v1.Passwordless/IssueLoginLink", {"email": "bob@example.com", "first_name": "Bob", "last_name": "Ray"})
    verified = grpc(pod.grpc, "latchkey.v1.Passwordless/VerifyToken", {"token": token_of(ann["link"])})
    assert verified["user"]["userId"] == ann["userId"] and verified["userActivated"] is True
    session = verified["session"]["sessionToken"]
    status, metrics = http_get(pod.http, "/metrics")
    assert status == 200
    assert re.search(r'latchkey_grpc_calls_total\{[^}]*method="VerifyToken"[^}]*\} 1', metrics), metrics
    assert http_get(pod.http, "/readyz") == (200, "ready\n")
    data = {path.name for path in (root / "var/lib/latchkey").iterdir()}
    assert data, "the store is on the data volume"

    exit_code, took, readyz = stop(containers, pod, grace)
    logs = containers.logs(pod.name)
    assert exit_code == 0, logs
    assert '"latchkey stopped cleanly"' in logs
    assert took >= delay, f"stopped in {took:.1f} s, before the {delay} s shutdown delay"
    assert 503 in readyz, f"/readyz never turned 503 while draining: {readyz}"
    containers.podman("rm", pod.name)

    again = run_command(root, "latchkey-image-test-again")
    restart_seconds = start(containers, again)
    # The unused link, the verified user's session, and the used link's state all survived.
    later = grpc(again.grpc, "latchkey.v1.Passwordless/VerifyToken", {"token": token_of(bob["link"])})
    assert later["user"]["userId"] == bob["userId"] and later["user"]["email"] == "bob@example.com"
    kept = grpc(again.grpc, "latchkey.v1.Sessions/AuthenticateSession", {"session_token": session})
    assert kept["user"]["userId"] == ann["userId"]
    assert "TOKEN_ALREADY_USED" in grpc_error(again.grpc, "latchkey.v1.Passwordless/VerifyToken", {"token": token_of(ann["link"])})
    exit_code, took_again, _ = stop(containers, again, grace)
    assert exit_code == 0, containers.logs(again.name)
    containers.podman("rm", again.name)
    FACTS["run"] = (
        f"SERVING {start_seconds:.2f} s after podman run ({restart_seconds:.2f} s on restart); "
        f"SIGTERM to exit 0 in {took:.1f} s and {took_again:.1f} s (shutdown delay {delay} s, grace {grace} s)"
    )


def test_a_read_only_data_volume_fails_clearly(containers, tmp_path):
    """A data volume mounted read-only: the container exits non-zero and says why."""
    rendered = support.render_scenario("default", VALUES)
    root = tmp_path / "pod"
    lay_out_pod(rendered, root)
    pod = run_command(root, "latchkey-image-test-ro", extra_volume_option="ro")
    containers.podman(*pod.argv)
    exit_code = int(containers.podman("wait", pod.name, timeout=120).stdout.strip())
    logs = containers.logs(pod.name)
    assert exit_code != 0, logs
    assert "cannot open the store in /var/lib/latchkey" in logs and "Read-only file system" in logs, logs
    containers.podman("rm", pod.name)
    FACTS["read-only"] = f"exit {exit_code}: " + logs.strip().splitlines()[-1]


def production_example(api_key_digest: str) -> str:
    """docs/configuration.md's example production file, as docs/operations.md's `docker run` uses it:
    without its server_key_file line (the key comes from LATCHKEY_SERVER_KEY), the placeholder
    digests replaced."""
    text = (REPO / "docs" / "configuration.md").read_text()
    match = re.search(r"^```toml config\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert match, "docs/configuration.md has no example production file"
    lines = [line for line in match.group(1).splitlines() if not line.startswith("server_key_file")]
    return "\n".join(lines).replace("REPLACE-with-the-output-of-latchkey-hash-key", api_key_digest) + "\n"


def docker_example(tmp_path: Path, name: str, server_key: str, volume: str, detach: bool) -> Pod:
    """docs/operations.md's `docker run`, run by podman: its flags as written, with a name, free
    loopback ports, the key and the data volume of this test, and the test image."""
    argv = readme_command("docker run")
    assert argv[:2] == ["docker", "run"], argv
    ports: dict[int, int] = {}
    result = ["run", *(["--detach"] if detach else []), "--name", name]
    for index, arg in enumerate(argv[2:], start=2):
        before = argv[index - 1]
        if before == "-p":
            host_port, container_port = arg.split(":")
            assert host_port == container_port, arg
            ports[int(container_port)] = free_port()
            arg = f"127.0.0.1:{ports[int(container_port)]}:{container_port}"
        elif before == "-e":
            assert arg == "LATCHKEY_SERVER_KEY=$(cat server.key)", arg
            arg = f"LATCHKEY_SERVER_KEY={server_key}"
        elif before == "-v" and arg.startswith("latchkey-data:"):
            arg = arg.replace("latchkey-data:", f"{volume}:", 1)
        elif index == len(argv) - 1:
            arg = IMAGE
        result.append(arg.replace("$PWD", str(tmp_path)))
    assert set(ports) == {50051, 9464}, f"the documented docker run publishes {sorted(ports)}"
    return Pod(name, tmp_path, f"127.0.0.1:{ports[50051]}", f"127.0.0.1:{ports[9464]}", result)


def stop_run_with_rm(containers: Containers, name: str) -> None:
    """Stops a container started with `--rm` and waits until its name is free again: podman's
    `--rm` removal runs in a cleanup process after `stop` returns, so a run that reuses the name
    at once can find it still taken (CI did)."""
    containers.podman("stop", "--time", "30", name)
    containers.podman("rm", "--force", "--ignore", "--time", "0", name)


def test_the_docker_example_keeps_its_server_key_across_runs(containers, tmp_path):
    """docs/operations.md's Docker example, with podman: the example production file starts in the
    image; a second run with the same key on the same volume knows the first run's user; a run with
    another key is refused with a message saying so."""
    binary = str(support.binary())
    key = subprocess.run([binary, "generate-server-key"], capture_output=True, text=True, check=True).stdout.strip()
    digest = subprocess.run([binary, "hash-key", API_KEY], capture_output=True, text=True, check=True).stdout.strip()
    config = tmp_path / "latchkey.toml"
    config.write_text(production_example(digest))
    config.chmod(0o644)
    volume = "latchkey-docs-example"
    try:
        first = docker_example(tmp_path, "latchkey-docker-example", key, volume, detach=True)
        start(containers, first)
        ann = grpc(first.grpc, "latchkey.v1.Passwordless/IssueLoginLink", {"email": "ann@example.com", "first_name": "Ann", "last_name": "Lee", "redirect_url": REDIRECT})
        assert ann["userCreated"] is True
        stop_run_with_rm(containers, first.name)

        again = docker_example(tmp_path, "latchkey-docker-example", key, volume, detach=True)
        start(containers, again)
        later = grpc(again.grpc, "latchkey.v1.Passwordless/IssueLoginLink", {"email": "ann@example.com", "redirect_url": REDIRECT})
        assert later["userId"] == ann["userId"] and not later.get("userCreated", False)
        stop_run_with_rm(containers, again.name)

        other_key = subprocess.run([binary, "generate-server-key"], capture_output=True, text=True, check=True).stdout.strip()
        refused = docker_example(tmp_path, "latchkey-docker-example", other_key, volume, detach=False)
        run = containers.podman(*refused.argv, check=False, timeout=120)
        assert run.returncode != 0, run.stdout
        assert "does not match" in run.stdout + run.stderr, run.stdout + run.stderr
    finally:
        containers.podman("rm", "--force", "--time", "0", "latchkey-docker-example", check=False)
        containers.podman("volume", "rm", "--force", volume, check=False)
    FACTS["docker example"] = "the example production file served twice on one volume with one key; another key refused"
