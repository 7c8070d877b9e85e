"""The container image: the promises of ``Containerfile``, read from the file, and its
entrypoint and health check run the way the image runs them.

No image is built here (this machine cannot pull the base image). Instead the Containerfile's
own build steps run on this machine with its paths mapped into a temporary directory: the
wheel is built from the files the build stage copies, the final stage's ``RUN`` installs it
into a fresh venv, and the entrypoint and health check start from the image's environment
(``ENV``), as the image's user (uid 10001) when the tests run as root, with no checkout on
the path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from backend.config import Settings
from tests.fakes.tls import make_tls
from tests.support.process import free_port, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[1]
CONTAINERFILE = ROOT / "Containerfile"
# PATH of the Debian-based python images, which ``ENV PATH=...:$PATH`` extends.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SECRET_NAME = re.compile(r".*(PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE|CREDENTIAL|API_?KEY).*")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_containerfile(text: str) -> list[list[Instruction]]:
    """The instructions of each stage (the ``ARG`` lines before the first ``FROM`` are
    stage 0's); continuation lines are joined and comment lines dropped, as the builders do."""
    stages: list[list[Instruction]] = [[]]
    logical = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.strip().partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), " ".join(args.split())))
        logical = ""
    return stages


STAGES = parse_containerfile(CONTAINERFILE.read_text(encoding="utf-8"))
BUILD, FINAL = STAGES[1], STAGES[-1]


def instructions(stage: list[Instruction], keyword: str) -> list[str]:
    return [each.args for each in stage if each.keyword == keyword]


def image_env() -> dict[str, str]:
    """The final stage's ``ENV`` as the runtime sees it (``$PATH`` expanded)."""
    env = {"PATH": BASE_PATH}
    for args in instructions(FINAL, "ENV"):
        for item in shlex.split(args):
            name, _, value = item.partition("=")
            env[name] = value.replace("$PATH", env["PATH"])
    return env


def exec_form(args: str) -> list[str]:
    """A JSON-array instruction argument (exec form), or fail: the shell form would put a
    ``/bin/sh -c`` in front that does not pass SIGTERM on."""
    value = json.loads(args)
    assert isinstance(value, list), args
    assert all(isinstance(v, str) for v in value), args
    return value


def copied(stage: list[Instruction]) -> dict[str, str]:
    """``COPY`` destinations of ``stage`` mapped to their sources in the build context."""
    result: dict[str, str] = {}
    for args in instructions(stage, "COPY"):
        parts = args.split()
        if any(p.startswith("--from") for p in parts):
            continue
        *sources, dest = parts
        for source in sources:
            result[dest.rstrip("/") + ("/" + source if dest.endswith("/") else "")] = source
    return result


def healthcheck_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "container/healthcheck.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the promises, read from the file ----------------------------------------------------------


def test_two_stages_on_a_slim_python_base_the_wheel_built_then_installed_into_a_venv() -> None:
    assert len(STAGES) == 3, "stage 0 (ARGs), the build stage and the final stage"
    for stage in (BUILD, FINAL):
        base = stage[0].args.split()[0]
        assert re.fullmatch(r"python:\$\{PYTHON_VERSION\}-slim(-[a-z]+)?", base), base
    assert any("pip wheel" in run and "--no-deps" in run for run in instructions(BUILD, "RUN"))
    installs = [run for run in instructions(FINAL, "RUN") if "openmfa-*.whl" in run]
    assert len(installs) == 1
    assert "from=build" in installs[0]
    assert "python -m venv /opt/openmfa" in installs[0]
    # No source in the final image: only the entrypoint and the health check are copied in.
    assert sorted(copied(FINAL).values()) == ["container/entrypoint.sh", "container/healthcheck.py"]


def test_runs_as_a_numeric_non_root_user() -> None:
    users = [i for i in FINAL if i.keyword == "USER"]
    assert users, "no USER: the server would run as root"
    # The last USER holds for ENTRYPOINT, CMD and HEALTHCHECK; nothing after it may be RUN.
    assert FINAL.index(users[-1]) > max(i for i, x in enumerate(FINAL) if x.keyword == "RUN")
    uid, _, gid = users[-1].args.partition(":")
    # Numeric, so that runAsNonRoot checks can see it is not root without reading /etc/passwd.
    assert re.fullmatch(r"[1-9][0-9]*", uid), users[-1]
    assert re.fullmatch(r"[1-9][0-9]*", gid), users[-1]
    assert f"--uid {uid}" in " ".join(instructions(FINAL, "RUN"))


def test_data_directory_is_a_volume_owned_by_that_user() -> None:
    home = image_env()["OPENMFA_HOME"]
    assert exec_form(instructions(FINAL, "VOLUME")[0]) == [home]
    assert f"install -d -m 0700 -o openmfa -g openmfa {home}" in " ".join(
        instructions(FINAL, "RUN")
    )


def test_settings_come_from_the_environment_and_none_is_a_secret() -> None:
    env = image_env()
    for name in env:
        assert not SECRET_NAME.fullmatch(name), f"ENV {name} looks like a secret"
        if name.startswith("OPENMFA_"):
            assert name.removeprefix("OPENMFA_").lower() in Settings.model_fields, name
    for stage in STAGES:
        for arg in instructions(stage, "ARG"):
            assert not SECRET_NAME.fullmatch(arg.partition("=")[0]), f"ARG {arg}"
    # Every address of the container, or nothing outside could reach the server.
    assert env["OPENMFA_HOST"] == "0.0.0.0"  # noqa: S104
    assert env["PATH"].startswith("/opt/openmfa/bin:")


def test_healthcheck_asks_readyz_of_the_configured_port() -> None:
    (check,) = instructions(FINAL, "HEALTHCHECK")
    command = exec_form(check.split(" CMD ", 1)[1])
    assert command[0] == "/opt/openmfa/bin/python"
    assert copied(FINAL)[command[1]] == "container/healthcheck.py"
    url = healthcheck_module().readyz_url
    assert url(image_env()) == "http://127.0.0.1:8080/readyz"
    assert url({"OPENMFA_HOST": "::", "OPENMFA_PORT": "9000"}) == "http://[::1]:9000/readyz"
    assert url({"OPENMFA_HOST": "10.0.0.5"}) == "http://10.0.0.5:8080/readyz"
    tls = {"OPENMFA_TLS_CERT_FILE": "/run/secrets/cert.pem"}
    assert url({**image_env(), **tls}) == "https://127.0.0.1:8080/readyz"


def test_entrypoint_and_command_are_exec_form() -> None:
    (entrypoint,) = instructions(FINAL, "ENTRYPOINT")
    (script,) = exec_form(entrypoint)
    assert copied(FINAL)[script] == "container/entrypoint.sh"
    assert os.access(ROOT / "container/entrypoint.sh", os.X_OK)
    assert exec_form(instructions(FINAL, "CMD")[0]) == ["openmfa", "run"]


def test_build_context_holds_what_is_copied_and_no_venv() -> None:
    for stage in (BUILD, FINAL):
        for source in copied(stage).values():
            assert (ROOT / source).exists(), source
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [line for line in ignore if line and not line.startswith("#")]
    # Everything is left out first, then only the named paths are let back in.
    assert rules[0] == "*"
    assert not any(".venv" in rule or ".db" in rule for rule in rules if rule.startswith("!"))


@pytest.mark.parametrize(
    ("linter", "target"),
    [("hadolint", "Containerfile"), ("shellcheck", "container/entrypoint.sh")],
)
def test_lints_clean(linter: str, target: str) -> None:
    """hadolint (Dockerfile practice: exec form, stage and package hygiene) and shellcheck
    (POSIX sh pitfalls) find nothing."""
    tool = Path(sys.executable).parent / linter
    result = subprocess.run(
        [str(tool), str(ROOT / target)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the same steps on this machine --------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """The image's file system, in a temporary directory: ``/opt/openmfa`` (the venv) and
    ``/usr/local/bin`` (what the final stage copies) mapped below ``root``."""

    root: Path
    uid: int | None  # the uid to run as (the image's), or None when not root here

    def path(self, text: str) -> str:
        for inside, here in (
            ("/opt/openmfa", self.root / "venv"),
            ("/usr/local/bin/openmfa-", self.root / "bin" / "openmfa-"),
            ("/dist", self.root / "dist"),
        ):
            text = text.replace(inside, str(here))
        return text

    def env(self, data: Path, **overrides: str) -> dict[str, str]:
        env = {k: self.path(v) for k, v in image_env().items()}
        return {**env, "OPENMFA_HOME": str(data), "HOME": str(data), **overrides}

    def data_dir(self, name: str) -> Path:
        """A fresh data directory, as the volume is: the image's user's, mode 0700."""
        data = self.root / name
        data.mkdir(mode=0o700)
        if self.uid is not None:
            os.chown(data, self.uid, self.uid)
        return data

    def run(self, argv: list[str], data: Path, **overrides: str) -> subprocess.Popen[bytes]:
        """Start ``argv`` (image paths mapped) as the image's user, in ``/`` as the image
        has no WORKDIR (``root`` stands in for it)."""
        out = (self.root / f"{data.name}.out").open("wb")
        err = (self.root / f"{data.name}.err").open("wb")
        with out, err:
            return subprocess.Popen(
                [self.path(a) for a in argv],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                env=self.env(data, **overrides),
                user=self.uid,
                group=self.uid,
                extra_groups=[] if self.uid is not None else None,
            )

    def output(self, data: Path) -> tuple[str, str]:
        return tuple(  # type: ignore[return-value]
            (self.root / f"{data.name}.{kind}").read_text(encoding="utf-8", errors="replace")
            for kind in ("out", "err")
        )


def _shell(command: str, cwd: Path, bindir: Path) -> None:
    """Run a ``RUN`` line with ``bindir`` (where ``python`` is) first on PATH, without what
    would put the checkout or this test run (coverage, its venv) into the build."""
    inherited = ("PYTHON", "OPENMFA_", "COV_CORE_", "COVERAGE_", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
    env["PATH"] = f"{bindir}:{os.environ['PATH']}"
    result = subprocess.run(
        ["/bin/sh", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"


def _base_python(root: Path, uid: int | None) -> Path:
    """A directory whose ``python`` is the interpreter the venv is made from (the base
    image's). As root the image's user must be able to run it, which a Python under /root
    (pyenv) is not: Debian's own python3 stands in for it, with its venv module
    (.ci/install-tools)."""
    python = Path(sys._base_executable)  # type: ignore[attr-defined]
    if uid is not None:
        python = Path("/usr/bin/python3")
        probe = subprocess.run(
            [str(python), "-c", "import ensurepip, venv"], capture_output=True, check=False
        )
        assert probe.returncode == 0, "the tests need Debian's python3-venv (make tools)"
    bindir = root / "base-python"
    bindir.mkdir()
    (bindir / "python").symlink_to(python)
    return bindir


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    """The build stage's and the final stage's steps, run here (about a minute, from pip's
    cache: the wheel build and a venv with every dependency)."""
    root = Path(tempfile.mkdtemp(prefix="openmfa-image-"))
    root.chmod(0o755)  # the image's user must reach the venv and the scripts
    uid = int(instructions(FINAL, "USER")[-1].split(":")[0]) if os.geteuid() == 0 else None
    image = Image(root, uid)
    try:
        src = root / "src"
        src.mkdir()
        for args in instructions(BUILD, "COPY"):
            *sources, dest = args.split()
            for source in sources:
                target = src / (source if dest.endswith("/") or dest == "./" else dest)
                if (ROOT / source).is_dir():
                    shutil.copytree(
                        ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy2(ROOT / source, target)
        for run in instructions(BUILD, "RUN"):
            _shell(image.path(run), src, Path(sys.executable).parent)
        (root / "bin").mkdir()
        for dest, source in copied(FINAL).items():
            shutil.copy2(ROOT / source, image.path(dest))
        for run in instructions(FINAL, "RUN"):
            if "openmfa-*.whl" in run:
                # The image keeps no pip cache; here pip's cache saves the downloads.
                command = run.split(" ", 1)[1].replace(" --no-cache-dir", "")
                _shell(image.path(command), root, _base_python(root, uid))
        yield image
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _healthcheck(image: Image, data: Path, port: int) -> subprocess.CompletedProcess[str]:
    (check,) = instructions(FINAL, "HEALTHCHECK")
    command = [image.path(a) for a in exec_form(check.split(" CMD ", 1)[1])]
    env = image.env(data, OPENMFA_HOST="127.0.0.1", OPENMFA_PORT=str(port))
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)


def test_entrypoint_migrates_serves_and_stops_on_sigterm(image: Image) -> None:
    data = image.data_dir("served")
    port, radius_port = free_port(), _free_udp_port()
    # Loopback and free ports instead of the image's 0.0.0.0:8080 and 1812: tests run side by side.
    listen = {"OPENMFA_HOST": "127.0.0.1", "OPENMFA_PORT": str(port)}
    command = exec_form(instructions(FINAL, "ENTRYPOINT")[0]) + exec_form(
        instructions(FINAL, "CMD")[0]
    )
    server = image.run(command, data, OPENMFA_RADIUS_PORT=str(radius_port), **listen)
    try:

        def ready() -> bool:
            if server.poll() is not None:
                raise AssertionError(f"exited {server.returncode}: {image.output(data)}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 90, "/readyz through the entrypoint", every=0.1)
        # The shell replaced itself: the process the runtime signals is the server.
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
        assert any(part.endswith(b"/openmfa") for part in cmdline), cmdline
        assert cmdline[-2:] == [b"run", b""], cmdline
        assert _healthcheck(image, data, port).returncode == 0
        # The database and the server key were made in the volume, by the image's user.
        for name in ("openmfa.db", "server.key"):
            owner = (data / name).stat().st_uid
            assert owner == (image.uid if image.uid is not None else os.geteuid()), name
        assert (data / "server.key").stat().st_mode & 0o077 == 0
        stdout, _ = image.output(data)
        assert "database at " in stdout  # `openmfa db upgrade` ran first
        # The first administrator's one-time link is in the container log (stdout).
        assert re.search(rf"http://127\.0\.0\.1:{port}/admin/bootstrap/\S+", stdout), stdout
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, image.output(data)
    finally:
        stop_process(server, timeout=15)
    failed = _healthcheck(image, data, port)
    assert failed.returncode == 1
    assert "/readyz" in failed.stderr


def test_other_commands_run_as_given_without_migrating(image: Image) -> None:
    data = image.data_dir("version")
    process = image.run(["/usr/local/bin/openmfa-entrypoint", "openmfa", "--version"], data)
    assert process.wait(timeout=60) == 0, image.output(data)
    assert image.output(data)[0].startswith("openmfa ")
    assert list(data.iterdir()) == []


def test_entrypoint_refuses_a_data_directory_it_cannot_write(image: Image) -> None:
    data = image.root / "foreign"
    data.mkdir(mode=0o700)  # root's when the tests run as root (the bind-mount mistake)
    if image.uid is None:
        data.chmod(0o500)  # not root: a directory its owner cannot write stands in
    try:
        process = image.run(
            ["/usr/local/bin/openmfa-entrypoint"], data, OPENMFA_PORT=str(free_port())
        )
        assert process.wait(timeout=60) == 1
        stdout, stderr = image.output(data)
        assert stderr.startswith(f"openmfa-entrypoint: error: the data directory {data} ")
        assert "chown" in stderr
        assert "Traceback" not in stderr
        assert stdout == ""
        assert list(data.iterdir()) == []
    finally:
        data.chmod(0o700)


class _Ready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/readyz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_healthcheck_speaks_https_trusting_the_servers_own_certificate(tmp_path: Path) -> None:
    """With OPENMFA_TLS_CERT_FILE the check asks https:// on loopback and trusts the server's
    certificate file, which names the public host (not 127.0.0.1); another certificate fails."""
    tls = make_tls(tmp_path / "served", hosts=("mfa.example.com",))
    stranger = make_tls(tmp_path / "other", hosts=("mfa.example.com",))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ready)
    server.socket = tls.server_context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        script = str(ROOT / "container/healthcheck.py")
        for cert, status in ((tls.cert_file, 0), (stranger.cert_file, 1)):
            env = {
                "PATH": os.environ["PATH"],
                "OPENMFA_HOST": "0.0.0.0",  # noqa: S104 - the image's; the check asks loopback
                "OPENMFA_PORT": str(server.server_address[1]),
                "OPENMFA_TLS_CERT_FILE": str(cert),
            }
            result = subprocess.run(
                [sys.executable, script], env=env, capture_output=True, text=True, timeout=30
            )
            assert result.returncode == status, (cert, result.stderr)
        assert "https://127.0.0.1:" in result.stderr
        assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
