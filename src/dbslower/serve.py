"""`dbslower serve`: the long-running agent's configuration and its fleet
of traced servers, kept in step with the host.

The fleet feeds the same stages as the CLI: discovery (discover.py) finds
the servers, plan.py plans one program per server binary, load.py attaches
it, and each becomes a pipeline Source. Every few seconds sync() looks
again: a binary with new servers is loaded, one no server runs any more is
detached, and new postmasters or mysqlds of a loaded binary are registered
with it (server numbers, PostgreSQL database ids, the PID filter).
"""

import ipaddress
import time
import tomllib
from dataclasses import dataclass, field, fields

from dbslower.discover import ENGINES, binary_engine, engine_of, file_key, find_servers, list_processes, process_cwd
from dbslower.errors import DbslowerError, NoServer, UsageError
from dbslower.load import load_plan
from dbslower.pipeline import Source, close_sources
from dbslower.plan import TEXT_BYTES_CHOICES, check_method

DEFAULT_PORT = 9479
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_CONFIG = "/etc/dbslower/dbslower.toml"
RETRY_FAILED_S = 60.0  # a binary that failed to load is tried again after this


@dataclass
class Settings:
    """serve's settings: the TOML keys are these names, and so are the flags
    (dashes for underscores). Defaults are here and nowhere else."""
    threshold: float = 100.0          # ms: statements at least this slow are logged
    listen: str = DEFAULT_LISTEN
    log: str = ""                     # "" no log, "-" stdout, else a file
    pid: list = field(default_factory=list)
    exe: str = ""
    redact: bool = True
    interval: float = 1.0             # s between reads of the kernel's aggregates
    rediscover: float = 2.0           # s between looks for new, restarted or gone servers
    text_bytes: int = 1024
    log_rate: int = 1000              # slow-log lines per second at most; the rest are counted
    fingerprint_metrics: bool = False
    top_fingerprints: int = 50
    fingerprint_ttl: float = 600.0    # s without a call before a fingerprint's series go
    container_label: bool = False
    # "socket": time statements at the servers' sockets (syscall tracepoints),
    # cheaper than the server's own probes; see the README's serve section.
    method: str = "auto"

    def check(self):
        problems = []
        if not (0 <= self.threshold <= 3_600_000):
            problems.append("threshold must be between 0 and 3600000 ms")
        if self.text_bytes not in TEXT_BYTES_CHOICES:
            problems.append(f"text_bytes must be one of {', '.join(map(str, TEXT_BYTES_CHOICES))}")
        for name in ("interval", "rediscover"):
            if not (0.05 <= getattr(self, name) <= 3600):
                problems.append(f"{name} must be between 0.05 and 3600 seconds")
        if self.log_rate < 0 or self.top_fingerprints < 1 or self.fingerprint_ttl <= 0:
            problems.append("log_rate must be >= 0, top_fingerprints >= 1 and fingerprint_ttl > 0")
        try:
            check_method("serve", None, self.method, self.digest_key)
        except UsageError as e:
            problems.append(str(e))
        if any(not isinstance(p, int) or p <= 0 for p in self.pid):
            problems.append("pid must be a list of positive integers")
        try:
            self.listen_address()
        except UsageError as e:
            problems.append(str(e))
        if problems:
            raise UsageError("; ".join(problems), "see 'dbslower serve -h'")

    @property
    def digest_key(self):
        """How the kernel keys serve's digests: by operation unless per-fingerprint metrics are asked for."""
        return "fingerprint" if self.fingerprint_metrics else "operation"

    def listen_address(self):
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise UsageError(f"listen must be HOST:PORT, not {self.listen!r}")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host != "localhost":
                raise UsageError(f"listen needs an IP address (or localhost), not {host!r}") from None
        return host, int(port)


def load_config(path):
    """Settings from a TOML file; unknown keys and wrong types are errors."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"cannot read the configuration {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path} is not valid TOML: {e}") from None
    known = {f.name: f for f in fields(Settings)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UsageError(f"{path}: unknown keys {', '.join(unknown)}",
                         f"the keys are {', '.join(sorted(known))}")
    defaults = Settings()
    for key, value in data.items():
        want = type(getattr(defaults, key))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            data[key] = float(value)
        elif not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise UsageError(f"{path}: {key} must be a {want.__name__}, not {value!r}")
    return data


def merge_settings(config, flags):
    """Flags win over the file; the file over the defaults."""
    values = dict(config)
    values.update({k: v for k, v in flags.items() if v is not None})
    s = Settings(**values)
    s.check()
    return s


class Fleet:
    """The sources a running agent traces, one per server binary."""

    def __init__(self, settings, notify, on_attach_error=None):
        self.settings = settings
        self.notify = notify
        self.on_attach_error = on_attach_error or (lambda: None)
        self.sources = {}        # (engine, binary file key) -> Source
        self.failed = {}         # (engine, binary file key) -> monotonic time of the failure
        self.server_ids = {}     # (engine, server pid) -> server id
        # -p: PostgreSQL clusters are followed across restarts by data directory
        self.follow_dirs = {}    # data directory -> engine

    def _wanted(self, procs):
        """{engine: [Server]} to trace now."""
        s = self.settings
        out = {}
        if s.pid:
            pids = []
            for pid in s.pid:
                p = procs.get(pid)
                if p is not None and engine_of(p):
                    pids.append(pid)
            # A restarted server: same data directory, new PID.
            for engine in ENGINES:
                try:
                    for srv in find_servers(engine, procs=procs):
                        if srv.datadir and srv.datadir in self.follow_dirs and srv.pid not in pids:
                            pids.append(srv.pid)
                except NoServer:
                    pass
            for pid in pids:
                engine = engine_of(procs[pid])
                srv = find_servers(engine, pids=[pid], procs=procs)[0]
                if srv.role == "server":
                    srv.datadir = srv.datadir or process_cwd(pid)
                    if srv.datadir:
                        self.follow_dirs[srv.datadir] = engine
                out.setdefault(engine, []).append(srv)
            return out
        for engine in ENGINES:
            try:
                if s.exe:
                    found = find_servers(engine, binary=s.exe, procs=procs) if binary_engine(s.exe) == engine else []
                else:
                    found = find_servers(engine, procs=procs)
            except NoServer:
                found = []
            if found:
                out[engine] = found
        return out

    def sync(self):
        """Brings the sources in line with the host; returns (added, removed)."""
        procs = list_processes()
        wanted = self._wanted(procs)
        groups = {}
        for engine, servers in wanted.items():
            for srv in servers:
                groups.setdefault((engine, file_key(srv.binary) or srv.binary), []).append(srv)
        added, removed = [], []
        for key, servers in groups.items():
            src = self.sources.get(key)
            if src is None:
                if time.monotonic() - self.failed.get(key, -1e9) < RETRY_FAILED_S:
                    continue
                src = self._load(key, servers)
                if src is None:
                    continue
                self.sources[key] = src
                added.append(src)
            self._register(key, src, servers, procs)
        for key in list(self.sources):
            if key not in groups:
                src = self.sources.pop(key)
                removed.append(src)
                self.notify(f"detached from {src.plan.targets[0].binary.path}: no server runs it any more")
        return added, removed

    def _load(self, key, servers):
        engine = key[0]
        s = self.settings
        try:
            plan, tracer = load_plan(engine, servers, pids=[srv.pid for srv in servers] if s.pid else None,
                                     threshold_ns=0, text_bytes=s.text_bytes, mode="serve",
                                     digest_key=s.digest_key, method=s.method)
        except DbslowerError as e:
            self.failed[key] = time.monotonic()
            self.on_attach_error()
            self.notify(f"cannot trace {servers[0].binary} (PIDs {', '.join(str(x.pid) for x in servers)}): "
                        f"{e.line()}; trying again in {RETRY_FAILED_S:g} s")
            return None
        tracer.set_slow_threshold(int(round(s.threshold * 1e6)))
        src = Source(plan, tracer)
        t = plan.targets[0]
        self.notify(f"tracing {src.system_name} {t.binary.path} (PIDs {', '.join(map(str, t.pids))}) via {t.method}")
        return src

    def _register(self, key, src, servers, procs):
        def server_id(pid):
            if (key[0], pid) not in self.server_ids:
                self.server_ids[(key[0], pid)] = len(self.server_ids) + 1
            return self.server_ids[(key[0], pid)]
        src.register(servers, procs, server_id)

    def close(self):
        close_sources(list(self.sources.values()))
        self.sources = {}
