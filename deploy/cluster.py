"""`make cluster`: storefront replicas on PostgreSQL behind nginx (grpc_pass), on this machine.

Creates the database if it is missing, migrates it once, starts the replicas (`storefront serve`
on free 127.0.0.1 ports, each with its own metrics port) and nginx in front of them with a local
rendering of deploy/nginx/storefront.conf, prints the addresses, and runs until Ctrl-C or
SIGTERM: then nginx stops, every replica drains (SIGTERM) and the command exits 0.

The pieces (rendering the nginx config, starting, stopping and killing replicas) are what
tests/cluster and bench/cluster_bench.py use too (`from deploy import cluster`).
"""

# Runs nginx and `storefront`, with arguments this module builds itself.
# ruff: noqa: S603

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx" / "storefront.conf"
STOREFRONT = Path(sys.executable).with_name("storefront")
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/storefront_cluster"
DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_DIRECTORY = ROOT / "var" / "cluster"
# nginx connects to the replicas from this loopback address, so that the replicas can tell
# nginx (a trusted proxy: STOREFRONT_TRUSTED_PROXIES) from a client on 127.0.0.1.
NGINX_SOURCE_ADDRESS = "127.0.0.2"
START_SECONDS = 30.0
# A replica drains in STOREFRONT_DRAIN_SECONDS + STOREFRONT_SHUTDOWN_GRACE_SECONDS (0 + 10 s by
# default) and closes its pool; past this it is killed.
STOP_SECONDS = 60.0
SERVING = health_pb2.HealthCheckResponse.SERVING


class ClusterError(Exception):
    """A part of the cluster could not be started; the message says which and why."""


# --- nginx ---------------------------------------------------------------------------------------


def nginx_executable() -> str | None:
    """Returns the nginx binary (PATH, then Debian's /usr/sbin/nginx), or None."""
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").is_file():
        found = "/usr/sbin/nginx"
    return found


def _replace_one(pattern: str, replacement: str, text: str, what: str) -> str:
    new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if count != 1:
        raise ValueError(f"{NGINX_CONF.name}: expected one {what}, found {count}")
    return new


def render_nginx_config(
    template: str,
    *,
    listen: str,
    upstreams: Sequence[str],
    directory: Path,
    source_address: str | None = NGINX_SOURCE_ADDRESS,
) -> str:
    """Returns deploy/nginx/storefront.conf (`template`) adapted to run on this machine.

    Only these change: the listen address, the upstream `server` lines (one per address in
    `upstreams`, with the first line's parameters), the pid file, the logs and the temporary
    files (all under `directory`), and, with `source_address`, the address nginx connects to the
    replicas from. Raises ValueError when the template no longer has one of them.
    """
    if not upstreams:
        raise ValueError("at least one upstream is needed")
    servers = list(
        re.finditer(
            r"^(?P<indent>[ \t]*)server[ \t]+[^\s{;]+(?P<params>[^;{]*);[ \t]*\n",
            template,
            flags=re.MULTILINE,
        )
    )
    if not servers:
        raise ValueError(f"{NGINX_CONF.name}: no upstream server lines")
    first = servers[0]
    lines = "".join(
        f"{first['indent']}server {address}{first['params']};\n" for address in upstreams
    )
    text = template[: first.start()] + lines
    position = first.end()
    for match in servers[1:]:
        text += template[position : match.start()]
        position = match.end()
    text += template[position:]

    text = _replace_one(r"^([ \t]*listen[ \t]+)\S+", rf"\g<1>{listen}", text, "listen line")
    text = _replace_one(r"^([ \t]*pid[ \t]+)[^;\s]+", rf"\g<1>{directory}/nginx.pid", text, "pid")
    text = _replace_one(
        r"^([ \t]*error_log[ \t]+)[^;\s]+", rf"\g<1>{directory}/error.log", text, "error_log"
    )
    text = _replace_one(
        r"^([ \t]*access_log[ \t]+)[^;\s]+", rf"\g<1>{directory}/access.log", text, "access_log"
    )
    temp = "".join(
        f"    {kind}_temp_path {directory}/temp/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = _replace_one(r"^(http[ \t]*\{[ \t]*\n)", rf"\g<1>{temp}", text, "http block")
    if source_address is not None:
        text = _replace_one(
            r"^([ \t]*)(grpc_pass[ \t][^;]+;[ \t]*\n)",
            rf"\g<1>\g<2>\g<1>grpc_bind {source_address};\n",
            text,
            "grpc_pass",
        )
    return text


def nginx_config(replicas: Sequence[Replica], listen: str, directory: Path) -> str:
    """deploy/nginx/storefront.conf rendered to listen on `listen` and send calls to
    `replicas`, with its files under `directory`."""
    return render_nginx_config(
        NGINX_CONF.read_text(),
        listen=listen,
        upstreams=[replica.address for replica in replicas],
        directory=directory,
    )


class Nginx:
    """nginx in the foreground with a config in `directory`; stop() finishes calls in progress."""

    def __init__(self, directory: Path, config: str, address: str) -> None:
        """Prepares nginx to serve `config` (rendered) on `address` ("host:port")."""
        self.directory = directory
        self.config_path = directory / "nginx.conf"
        self.address = address
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def error_log(self) -> Path:
        """The file nginx writes its errors to."""
        return self.directory / "error.log"

    @property
    def access_log(self) -> Path:
        """The file nginx writes one JSON line per call to."""
        return self.directory / "access.log"

    def start(self, timeout: float = START_SECONDS) -> None:
        """Checks the config, starts nginx and waits until it accepts connections."""
        executable = nginx_executable()
        if executable is None:
            raise ClusterError("nginx is not installed (Debian: apt-get install nginx-light)")
        (self.directory / "temp").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config)
        base = [executable, "-p", str(self.directory), "-c", str(self.config_path)]
        checked = subprocess.run(
            [*base, "-t", "-q"], capture_output=True, text=True, check=False, timeout=timeout
        )
        if checked.returncode != 0:
            raise ClusterError(f"nginx -t refused {self.config_path}:\n{checked.stderr.strip()}")
        with (self.directory / "nginx.out").open("ab") as out:
            self.process = subprocess.Popen(
                [*base, "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches cluster.py alone, which stops us
            )
        host, port = split_address(self.address)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ClusterError(f"nginx exited at start:\n{self._log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
                return
            time.sleep(0.02)
        raise ClusterError(f"nginx did not listen on {self.address} in {timeout:g}s")

    def reload(self, config: str, timeout: float = STOP_SECONDS) -> None:
        """Serves `config` from now on (SIGHUP) and returns once the workers of the old config
        have finished their calls in progress and exited, so no new call uses the old one."""
        process = self.process
        if process is None or process.poll() is not None:
            raise ClusterError("nginx is not running")
        executable = nginx_executable()
        assert executable is not None  # it runs
        self.config_path.write_text(config)
        checked = subprocess.run(
            [executable, "-p", str(self.directory), "-c", str(self.config_path), "-t", "-q"],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if checked.returncode != 0:
            self.config_path.write_text(self.config)
            raise ClusterError(f"nginx -t refused {self.config_path}:\n{checked.stderr.strip()}")
        old_workers = set(child_pids(process.pid))
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while old_workers & set(child_pids(process.pid)):
            if time.monotonic() > deadline:
                raise ClusterError(f"nginx's old workers did not exit in {timeout:g}s")
            time.sleep(0.02)
        self.config = config

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Stops gracefully (SIGQUIT: calls in progress finish), killing it after `timeout`."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def _log_tail(self) -> str:
        texts = [
            path.read_text(errors="replace")[-4000:]
            for path in (self.directory / "nginx.out", self.error_log)
            if path.exists()
        ]
        return "\n".join(texts).strip()


# --- replicas ------------------------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    """The living children of process `pid`, from /proc."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):  # the task ended meanwhile
            children.extend(int(child) for child in task.read_text().split())
    return children


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def split_address(address: str) -> tuple[str, int]:
    """Returns ("host", port) of "host:port"."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def health_status(target: str, *, service: str = "", timeout: float = 2.0) -> int | None:
    """Returns grpc.health.v1 Check's status at `target` on a new connection; None if it fails."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(target, options=options) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return None
    status: int = response.status
    return status


@dataclass
class Replica:
    """One `storefront serve` process on a fixed address; it can be stopped and started again."""

    name: str
    address: str
    metrics_address: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def metrics_url(self) -> str:
        """Where the replica's Prometheus metrics are."""
        return f"http://{self.metrics_address}/metrics"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Starts the process (its stderr appended to the log file); see wait_serving."""
        if self.running:
            raise ClusterError(f"{self.name} is already running")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(STOREFRONT), "serve"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches cluster.py alone, which drains us
            )

    def wait_serving(self, timeout: float = START_SECONDS) -> None:
        """Waits for health SERVING; raises ClusterError if the process exits or is too slow."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise ClusterError(f"{self.name} exited at start:\n{self.log_tail()}")
            if health_status(self.address, timeout=1.0) == SERVING:
                return
            time.sleep(0.05)
        raise ClusterError(f"{self.name} was not SERVING within {timeout:g}s:\n{self.log_tail()}")

    def signal(self, signum: signal.Signals) -> None:
        """Sends `signum` to the process."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout: float = STOP_SECONDS) -> int:
        """Waits for the process to exit (killing it after `timeout`); returns its status."""
        assert self.process is not None, f"{self.name} was never started"
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def terminate(self, timeout: float = STOP_SECONDS) -> int:
        """Drains and stops the replica (SIGTERM); returns its exit status."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """Kills the process at once (SIGKILL), as a crash or the OOM killer would."""
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def log_tail(self, characters: int = 4000) -> str:
        """The end of the replica's log."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-characters:].strip()


def replica_env(
    variables: Mapping[str, str],
    *,
    database_url: str,
    data_dir: Path,
    keys_dir: Path,
    address: str,
    metrics_address: str,
) -> dict[str, str]:
    """Returns a replica's environment: this process's without STOREFRONT_* variables, then
    `variables`, then what each replica needs of its own or must share with the others.

    Every replica signs and checks tokens and page tokens with the same keys (development keys
    are generated once into `keys_dir`) and believes x-forwarded-for from nginx alone.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREFRONT_")}
    env.update(variables)
    env.update(
        STOREFRONT_DATABASE_URL=database_url,
        STOREFRONT_DATA_DIR=str(data_dir),
        STOREFRONT_GRPC_ADDRESS=address,
        STOREFRONT_METRICS_ADDRESS=metrics_address,
    )
    env.setdefault("STOREFRONT_JWT_SIGNING_KEY_FILE", str(keys_dir / "jwt-signing-key.pem"))
    env.setdefault("STOREFRONT_PAGE_TOKEN_SECRET_FILE", str(keys_dir / "page-token.key"))
    env.setdefault("STOREFRONT_TRUSTED_PROXIES", NGINX_SOURCE_ADDRESS)
    return env


# --- PostgreSQL ----------------------------------------------------------------------------------


def redacted(url: str) -> str:
    """Returns `url` without its password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return urllib.parse.urlunsplit(
        parts._replace(netloc=parts.netloc.replace(parts.password, "***"))
    )


def database_name(url: str) -> str:
    """Returns the database a PostgreSQL URL names."""
    name = urllib.parse.urlsplit(url).path.lstrip("/")
    if not name:
        raise ClusterError(f"no database name in {redacted(url)}")
    return urllib.parse.unquote(name)


def with_database(url: str, name: str) -> str:
    """Returns `url` naming database `name` instead."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{urllib.parse.quote(name)}"))


def _libpq_url(url: str) -> str:
    """Returns a URL psycopg accepts (storefront's psycopg3+pool:// scheme is peewee's)."""
    scheme = urllib.parse.urlsplit(url).scheme
    return "postgresql" + url[len(scheme) :]


def create_database(url: str) -> bool:
    """Creates the database `url` names on its server unless it exists; True if it was created."""
    import psycopg
    from psycopg import sql

    name = database_name(url)
    admin = with_database(_libpq_url(url), "postgres")
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
            if connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone():
                return False
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise ClusterError(f"cannot create database {name!r} on {redacted(admin)}: {exc}") from exc
    return True


def drop_database(url: str) -> None:
    """Drops the database `url` names, closing its connections first."""
    import psycopg
    from psycopg import sql

    name = database_name(url)
    admin = with_database(_libpq_url(url), "postgres")
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def migrate(database_url: str, env: Mapping[str, str]) -> None:
    """Runs `storefront migrate` once on the database."""
    result = subprocess.run(
        [str(STOREFRONT), "migrate"],
        env={**env, "STOREFRONT_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise ClusterError(f"storefront migrate failed:\n{result.stderr.strip()}")


# --- the cluster ---------------------------------------------------------------------------------


@dataclass
class Cluster:
    """Replicas on one database behind nginx; `address` is where clients connect."""

    database_url: str
    directory: Path
    replicas: list[Replica]
    nginx: Nginx

    @property
    def address(self) -> str:
        """nginx's gRPC address, "host:port"."""
        return self.nginx.address

    def restart_stopped(self, timeout: float = START_SECONDS) -> list[Replica]:
        """Starts again every replica that is not running; returns them once they serve (and
        nginx sends them calls again)."""
        stopped = [replica for replica in self.replicas if not replica.running]
        for replica in stopped:
            replica.start()
        for replica in stopped:
            replica.wait_serving(timeout)
        self.nginx.reload(nginx_config(self.replicas, self.nginx.address, self.nginx.directory))
        return stopped

    def drain(self, replica: Replica, timeout: float = STOP_SECONDS) -> int:
        """Stops one replica without failing a call, as a rolling restart does: nginx stops
        sending it calls first (reload without it, the old workers finish theirs), then it
        drains (SIGTERM). Returns its exit status.

        A SIGTERM alone is not enough behind nginx, which has no health checks: calls keep
        arriving until the replica stops listening, and grpc cancels those that arrived but
        had not yet been handed to a handler at that instant (CANCELLED)."""
        others = [other for other in self.replicas if other is not replica]
        self.nginx.reload(nginx_config(others, self.nginx.address, self.nginx.directory))
        return replica.terminate(timeout)

    def stop(self) -> dict[str, int]:
        """Stops nginx (calls in progress finish), then drains every replica at once; returns
        each replica's exit status by name."""
        self.nginx.stop()
        running = [replica for replica in self.replicas if replica.running]
        for replica in running:
            replica.signal(signal.SIGTERM)
        return {replica.name: replica.wait() for replica in running}


@contextlib.contextmanager
def running_cluster(
    database_url: str,
    directory: Path,
    *,
    replicas: int = 3,
    listen: str | None = None,
    variables: Mapping[str, str] | None = None,
) -> Iterator[Cluster]:
    """Migrates the (existing) database, starts the replicas and nginx; stops them all on exit.

    `variables` are STOREFRONT_* settings for every replica; `listen` is nginx's address (a free
    127.0.0.1 port when None). Files (logs, nginx config, keys, data) go under `directory`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    keys_dir = directory / "keys"
    listen = listen or f"127.0.0.1:{free_port()}"
    members = []
    for index in range(1, replicas + 1):
        name = f"replica-{index}"
        data_dir = directory / name
        data_dir.mkdir(exist_ok=True)
        address, metrics_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        env = replica_env(
            variables or {},
            database_url=database_url,
            data_dir=data_dir,
            keys_dir=keys_dir,
            address=address,
            metrics_address=metrics_address,
        )
        members.append(Replica(name, address, metrics_address, env, directory / f"{name}.log"))
    nginx = Nginx(directory / "nginx", nginx_config(members, listen, directory / "nginx"), listen)
    cluster = Cluster(database_url, directory, members, nginx)
    migrate(database_url, members[0].env)
    try:
        for replica in members:
            replica.start()
        for replica in members:
            replica.wait_serving()
        nginx.start()
        yield cluster
    finally:
        cluster.stop()


# --- the command ---------------------------------------------------------------------------------


def _announce(cluster: Cluster) -> None:
    width = max(len(replica.name) for replica in cluster.replicas)
    lines = [
        "",
        f"storefront cluster: {len(cluster.replicas)} replicas on PostgreSQL "
        f"{redacted(cluster.database_url)} behind nginx",
        "",
        f"  gRPC (nginx)  {cluster.address}",
    ]
    lines += [
        f"  {replica.name:<{width}}     {replica.address}  metrics {replica.metrics_url}  "
        f"log {replica.log_path}"
        for replica in cluster.replicas
    ]
    lines += [
        f"  nginx logs    {cluster.nginx.access_log}, {cluster.nginx.error_log}",
        "",
        "Try it:",
        f"  .venv/bin/buf curl --protocol grpc --http2-prior-knowledge --list-methods "
        f"http://{cluster.address}",
        f"  .venv/bin/buf curl --protocol grpc --http2-prior-knowledge "
        f"http://{cluster.address}/storefront.v1.CatalogService/ListProducts",
        "",
        "Ctrl-C (or SIGTERM) stops nginx and drains every replica.",
        "",
    ]
    print("\n".join(lines), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the cluster until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("STOREFRONT_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="PostgreSQL database, created if missing (default: STOREFRONT_DATABASE_URL, "
        "else %(default)s)",
    )
    parser.add_argument("--replicas", type=int, default=3, help="replicas (default: %(default)s)")
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN, help="nginx's gRPC address (default: %(default)s)"
    )
    parser.add_argument(
        "--directory",
        type=Path,
        default=DEFAULT_DIRECTORY,
        help="logs, nginx config, keys (default: %(default)s)",
    )
    options = parser.parse_args(argv)
    if options.replicas < 1:
        parser.error("--replicas must be at least 1")
    if not urllib.parse.urlsplit(options.database_url).scheme.startswith(("postgres", "psycopg")):
        parser.error("--database-url must be a PostgreSQL URL (replicas share one database)")

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    # STOREFRONT_* settings in this environment apply to every replica (except the ones each
    # replica needs of its own: address, metrics address, data directory).
    variables = {k: v for k, v in os.environ.items() if k.startswith("STOREFRONT_")}
    try:
        if create_database(options.database_url):
            print(f"cluster: created database {database_name(options.database_url)}", flush=True)
        with running_cluster(
            options.database_url,
            options.directory.resolve(),
            replicas=options.replicas,
            listen=options.listen,
            variables=variables,
        ) as cluster:
            _announce(cluster)
            reported: set[str] = set()
            while not stop.wait(1.0):
                for replica in cluster.replicas:
                    if not replica.running and replica.name not in reported:
                        reported.add(replica.name)
                        print(
                            f"cluster: {replica.name} exited with status "
                            f"{replica.process.returncode if replica.process else '?'}; "
                            f"nginx sends its calls to the others (log: {replica.log_path})",
                            file=sys.stderr,
                            flush=True,
                        )
            print("cluster: stopping nginx, draining the replicas ...", file=sys.stderr, flush=True)
            statuses = cluster.stop()
    except ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    failed = {name: code for name, code in statuses.items() if code != 0}
    if failed:
        print(f"cluster: replicas exited with an error: {failed}", file=sys.stderr)
        return 1
    print("cluster: stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
