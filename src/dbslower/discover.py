"""Find the database servers to trace, their binaries and versions.

First stage of the pipeline: reads /proc and the server binaries, nothing
else. Raises NoServer / NotAServer / UsageError; never prints.
"""

import os
import re
from dataclasses import dataclass, field

from dbslower.elf import ElfError, ElfFile
from dbslower.errors import NoServer, NotAServer, UsageError

ENGINES = ("postgres", "mysql")
ENGINE_LABEL = {"postgres": "PostgreSQL", "mysql": "MySQL/MariaDB"}
PG_NAMES = ("postgres", "postmaster")
MY_NAMES = ("mysqld", "mariadbd")


@dataclass
class Process:
    pid: int
    ppid: int
    comm: str
    exe: str        # path to open the binary by (may be /proc/PID/exe)
    exe_name: str   # basename of the binary


@dataclass
class Server:
    engine: str
    pid: int                 # postmaster or mysqld/mariadbd
    binary: str
    role: str = "server"     # "server", or "backend" for one PostgreSQL backend given with -p
    datadir: str = ""
    children: list = field(default_factory=list)

    def describe(self):
        """How a DBA names this server: its data directory, else its PID."""
        return self.datadir or f"pid {self.pid}"


@dataclass
class Binary:
    path: str
    engine: str
    flavor: str              # postgresql, mariadb, mysql
    version: tuple = ()      # (major, minor) when known
    version_source: str = ""


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def read_process(pid, proc="/proc"):
    stat = _read(f"{proc}/{pid}/stat")
    if not stat:
        return None
    # comm may contain spaces and parentheses: split at the last ')'.
    rpar = stat.rfind(b")")
    comm = stat[stat.find(b"(") + 1:rpar].decode("utf-8", "replace")
    fields = stat[rpar + 2:].split()
    ppid = int(fields[1])
    try:
        exe = os.readlink(f"{proc}/{pid}/exe")
    except OSError:
        return None  # kernel thread, or gone
    if exe.endswith(" (deleted)"):
        # The server runs a binary replaced on disk (a package upgrade):
        # the old inode is still reachable through the magic link.
        path = f"{proc}/{pid}/exe"
        exe = exe[:-len(" (deleted)")]
    else:
        path = host_path(pid, exe, proc)
    return Process(pid, ppid, comm, path, os.path.basename(exe))


def file_key(path):
    """(st_dev, st_ino): one binary, whatever path or mount namespace names it."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def host_path(pid, exe, proc="/proc"):
    """A path on this host to the binary process `pid` runs. In a container
    (another mount namespace) the path it reports may not exist here, or be
    another file: then its root, /proc/PID/root, leads to it; failing that,
    the magic link /proc/PID/exe."""
    real = file_key(f"{proc}/{pid}/exe")
    if real is None:
        return exe
    for candidate in (exe, f"{proc}/{pid}/root{exe}"):
        if file_key(candidate) == real:
            return candidate
    return f"{proc}/{pid}/exe"


def read_memory(pid, addr, n, proc="/proc"):
    """n bytes at addr in process pid's memory, or None when they cannot be
    read (the process exited, or the address is not mapped)."""
    try:
        fd = os.open(f"{proc}/{pid}/mem", os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.pread(fd, n, addr)
    except (OSError, OverflowError, ValueError):
        return None
    finally:
        os.close(fd)


def load_base(pid, inode, proc="/proc"):
    """Address at which process `pid` mapped the start (file offset 0) of the
    executable with this inode, from /proc/PID/maps; None if not mapped."""
    try:
        with open(f"{proc}/{pid}/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[2] == "00000000" and parts[4] == str(inode):
                    return int(parts[0].split("-")[0], 16)
    except (OSError, ValueError):
        pass
    return None


def symbol_address(pid, binary_path, symbol, proc="/proc"):
    """Run-time address in process `pid` of a symbol (vaddr, position-
    independent?) of the binary at binary_path; None when not mapped."""
    vaddr, pie = symbol
    if not pie:
        return vaddr
    key = file_key(binary_path)
    base = load_base(pid, key[1], proc) if key else None
    return None if base is None else base + vaddr


_CONTAINER_ID = re.compile(r"([0-9a-f]{64})")


def container_id(pid, proc="/proc"):
    """The container a process runs in, from its cgroup path (Docker,
    containerd, CRI-O and Podman put the 64-hex id there); "" on the host."""
    raw = _read(f"{proc}/{pid}/cgroup") or b""
    for line in raw.decode("utf-8", "replace").splitlines():
        m = _CONTAINER_ID.search(line.rsplit(":", 1)[-1])
        if m:
            return m[1]
    return ""


def namespace_pid(pid, proc="/proc"):
    """The PID inside the process's own PID namespace, when it differs."""
    raw = _read(f"{proc}/{pid}/status") or b""
    for line in raw.decode().splitlines():
        if line.startswith("NSpid:"):
            ids = line.split()[1:]
            if len(ids) > 1:
                return int(ids[-1])
    return None


def list_processes(proc="/proc"):
    out = {}
    for name in os.listdir(proc):
        if name.isdigit():
            p = read_process(int(name), proc)
            if p:
                out[p.pid] = p
    return out


def _is_engine_process(engine, p):
    names = PG_NAMES if engine == "postgres" else MY_NAMES
    return p.exe_name in names or p.comm in names


def process_cwd(pid):
    """A server's working directory: its data directory (the postmaster and
    mysqld chdir() there at startup)."""
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _server(engine, p, procs):
    s = Server(engine, p.pid, p.exe)
    if engine == "postgres":
        s.datadir = process_cwd(p.pid)
        s.children = sorted(c.pid for c in procs.values() if c.ppid == p.pid)
    return s


def _pg_postmasters(procs):
    """Postmasters: postgres processes whose parent is not a postgres process
    running the same binary (backends and auxiliaries are its children)."""
    out = []
    for p in procs.values():
        if not _is_engine_process("postgres", p):
            continue
        parent = procs.get(p.ppid)
        if parent and _is_engine_process("postgres", parent) and parent.exe_name == p.exe_name:
            continue
        out.append(p)
    return out


def find_servers(engine, pids=None, binary=None, procs=None):
    """The servers to trace.

    pids: limit to these server processes (for PostgreSQL a postmaster means
    its whole cluster, a backend just that backend). binary: every process
    running this binary (possibly none yet: it is traced when it starts).
    """
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    procs = list_processes() if procs is None else procs
    if pids:
        servers = []
        for pid in pids:
            p = procs.get(pid)
            if p is None:
                raise NotAServer(f"no process with PID {pid}", "check the PID with 'ps -p PID'")
            if not _is_engine_process(engine, p):
                raise NotAServer(f"PID {pid} ({p.comm}) is not a {engine} server",
                                 f"list {engine} servers with 'pgrep -a {'postgres' if engine == 'postgres' else 'mysqld|mariadbd'}'")
            s = _server(engine, p, procs)
            if engine == "postgres" and p not in _pg_postmasters(procs):
                s.role = "backend"
                s.children = []
            servers.append(s)
        return servers
    if binary:
        real = os.path.realpath(binary)
        if not os.path.isfile(real):
            raise UsageError(f"{binary}: no such file", "give the server binary's path to -x")
        running = [p for p in procs.values() if os.path.realpath(p.exe) == real]
        if engine == "postgres":
            pm = set(p.pid for p in _pg_postmasters(procs))
            running = [p for p in running if p.pid in pm]
        return [_server(engine, p, procs) for p in running]
    if engine == "postgres":
        found = _pg_postmasters(procs)
    else:
        found = [p for p in procs.values() if _is_engine_process(engine, p)]
    if not found:
        what = "PostgreSQL postmaster" if engine == "postgres" else "mysqld or mariadbd process"
        raise NoServer(f"no running {what} found",
                       "start the server, or give its binary with -x PATH")
    return [_server(engine, p, procs) for p in sorted(found, key=lambda p: p.pid)]


_PG_VERSION_RE = rb"\(PostgreSQL\) (\d+)(?:\.(\d+))?"
_MARIADB_VERSION_RE = rb"(\d+)\.(\d+)\.\d+-MariaDB"
_MYSQL_VERSION_RE = rb"\x00(\d+)\.(\d+)\.\d+\x00"


def inspect_binary(path, engine, datadir=""):
    """Flavor and version of a server binary: from its own version string,
    else (PostgreSQL) from PG_VERSION in the data directory."""
    try:
        with ElfFile(path) as elf:
            if engine == "postgres":
                m = elf.find_bytes(_PG_VERSION_RE)
                if m:
                    return Binary(path, engine, "postgresql", (int(m[0]), int(m[1] or 0)), "binary")
            else:
                m = elf.find_bytes(_MARIADB_VERSION_RE)
                if m:
                    return Binary(path, engine, "mariadb", (int(m[0]), int(m[1])), "binary")
                m = elf.find_bytes(_MYSQL_VERSION_RE)
                if m:
                    return Binary(path, engine, "mysql", (int(m[0]), int(m[1])), "binary")
                return Binary(path, engine, "mysql")
    except ElfError as e:
        raise NotAServer(str(e), "give -x the server's binary") from e
    if datadir:
        raw = _read(os.path.join(datadir, "PG_VERSION"))
        if raw and re.fullmatch(rb"\d+(\.\d+)?\s*", raw):
            parts = raw.decode().strip().split(".")
            return Binary(path, engine, "postgresql", (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0), "PG_VERSION")
    return Binary(path, engine, "postgresql")


def start_time(pid, proc="/proc"):
    """A process's start time (clock ticks after boot): with its PID, the
    identity of a process, since PIDs are reused."""
    stat = _read(f"{proc}/{pid}/stat")
    if not stat:
        return None
    return int(stat[stat.rfind(b")") + 2:].split()[19])


def binary_engine(path):
    """The engine a server binary is for, by its name; None if unknown."""
    name = os.path.basename(os.path.realpath(path))
    return "postgres" if name in PG_NAMES else "mysql" if name in MY_NAMES else None


def engine_of(proc):
    """The engine a process runs, or None."""
    return next((e for e in ENGINES if _is_engine_process(e, proc)), None)


def find_servers_by_engine(engines, pids=None, binary=None, procs=None):
    """{engine: servers} for each engine that has something to trace.

    With one engine this is find_servers(). With several (top, serve), PIDs
    go to the engine each one runs, an -x binary to the engine it is for,
    and an engine with no server is left out; NoServer only when none has one.
    """
    if len(engines) == 1:
        return {engines[0]: find_servers(engines[0], pids=pids, binary=binary, procs=procs)}
    procs = list_processes() if procs is None else procs
    out = {}
    if pids:
        for pid in pids:
            p = procs.get(pid)
            if p is None:
                raise NotAServer(f"no process with PID {pid}", "check the PID with 'ps -p PID'")
            engine = engine_of(p)
            if engine is None:
                raise NotAServer(f"PID {pid} ({p.comm}) is not a PostgreSQL, MySQL or MariaDB server")
            out.setdefault(engine, []).append(pid)
        return {e: find_servers(e, pids=ps, procs=procs) for e, ps in out.items()}
    if binary:
        engine = binary_engine(binary)
        if engine is None:
            raise UsageError(f"{binary}: cannot tell which engine this binary is for",
                             "name the engine: dbslower top postgres -x PATH")
        return {engine: find_servers(engine, binary=binary, procs=procs)}
    for engine in engines:
        try:
            out[engine] = find_servers(engine, procs=procs)
        except NoServer:
            pass
    if not out:
        raise NoServer("no running PostgreSQL postmaster, mysqld or mariadbd process found",
                       "start a server, or give its binary with -x PATH")
    return out


def pg_database_names(datadir):
    """{database OID: name} of a PostgreSQL cluster, from its pg_database
    heap file (layout and sources: quirks.py). Live rows win over deleted
    ones (a renamed database leaves its old row until vacuum). {} when the
    file cannot be read."""
    import struct
    from dbslower import quirks as q
    try:
        with open(os.path.join(datadir, "global", "pg_filenode.map"), "rb") as f:
            raw = f.read()
        magic, n = struct.unpack_from("<ii", raw, 0)
        if magic != q.PG_FILENODE_MAP_MAGIC:
            return {}
        filenode = next((fn for oid, fn in struct.iter_unpack("<II", raw[8:8 + 8 * n]) if oid == q.PG_DATABASE_OID),
                        q.PG_DATABASE_OID)
        with open(os.path.join(datadir, "global", str(filenode)), "rb") as f:
            heap = f.read()
    except (OSError, struct.error):
        return {}
    live, dead = {}, {}
    for page in range(0, len(heap) - q.PG_PAGE_BYTES + 1, q.PG_PAGE_BYTES):
        lower = struct.unpack_from("<H", heap, page + 12)[0]
        for lp in range(page + q.PG_PAGE_HEADER_BYTES, page + min(lower, q.PG_PAGE_BYTES), 4):
            word = struct.unpack_from("<I", heap, lp)[0]
            off, flags, length = word & 0x7FFF, (word >> 15) & 3, word >> 17
            if flags != 1 or not length:
                continue
            tup = page + off
            infomask, hoff = struct.unpack_from("<HB", heap, tup + 20)
            if infomask & q.PG_HEAP_XMIN_INVALID:
                continue
            data = tup + hoff
            oid = struct.unpack_from("<I", heap, data)[0]
            name = heap[data + 4:data + 4 + q.PG_NAMEDATALEN].split(b"\0", 1)[0].decode("utf-8", "replace")
            (live if infomask & q.PG_HEAP_XMAX_INVALID else dead)[oid] = name
    dead.update(live)
    return dead
