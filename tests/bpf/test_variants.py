"""Every build variant of the BPF program compiles, passes the verifier and
attaches: engine x probe method x mode x text size (and the PID filter), so
a change that breaks a rarely used variant fails here. The size of each
loaded program is printed (pytest -s) to watch the verifier's budget."""


import pytest

from fixture_programs import running
from helpers import require_root

pytestmark = pytest.mark.bpf

# serve/operation: serve without per-fingerprint metrics (digests by operation)
MODES = ["stream", "hist", "digest", "top", "serve", "serve/operation", "floor"]


@pytest.fixture(scope="module")
def mysql_usdt():
    yield from running("mysql_usdt.c", "gcc")


@pytest.fixture(scope="module")
def mysql57():
    yield from running("mysql57_abi.cc", "g++")


def load(engine, servers, mode, text_bytes, filter_pids, no_usdt=None, method="auto"):
    from dbslower.load import Tracer
    from dbslower.plan import make_plan
    mode, _, digest_key = mode.partition("/")
    plan = make_plan(engine, servers, pids=[s.pid for s in servers] if filter_pids else None,
                     threshold_ns=0, text_bytes=text_bytes, mode=mode, no_usdt=no_usdt, method=method,
                     digest_key=digest_key or "fingerprint")
    assert plan.cflags(plan.targets[0])["DIGEST_BY_OPERATION"] == (digest_key == "operation")
    with Tracer(plan) as tracer:
        sizes = {}
        from dbslower.plan import DIGEST_MODES
        for lt in tracer.loaded:
            fns = [p.fn for p in lt.target.probes] + (["fp_chunk"] if mode in DIGEST_MODES else []) \
                + (["fp_chunk_tp"] if lt.target.cflags.get("DIGEST_TP_CHAIN") else [])
            for fn in fns:
                sizes[fn] = len(lt.bpf.dump_func(fn.encode())) // 8
        print(f"{engine} {plan.targets[0].method} {mode} {digest_key} {text_bytes} filter={filter_pids}: "
              + ", ".join(f"{fn} {n}" for fn, n in sorted(sizes.items())))
        return plan.targets[0].method, sizes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("text_bytes", [1024, 8192])
def test_postgres_variants(pg, mode, text_bytes, monkeypatch):
    require_root()
    from dbslower.discover import find_servers
    from dbslower.plan import DIGEST_MODES, FORCE_STATUS_ENV
    servers = find_servers("postgres", pids=[pg.pid])
    # the server's own start stamp; the report at the backend's send (a
    # tracepoint), which in the digest modes tail-calls its own fp_chunk
    report = "tracepoint__syscalls__sys_enter_sendto"
    digest = mode.partition("/")[0] in DIGEST_MODES
    for machine in ("server-times", "status"):
        if machine == "status":
            monkeypatch.setenv(FORCE_STATUS_ENV, "1")
        for method, no_usdt in (("usdt", None), ("uprobe", "test: the uprobe variant")):
            for filter_pids in (False, True):
                got, sizes = load("postgres", servers, mode, text_bytes, filter_pids, no_usdt)
                assert got == method and sizes
                assert ("pg_status" in sizes) == (machine == "status")
                assert (report in sizes) == (machine == "server-times")
                assert ("fp_chunk_tp" in sizes) == (digest and machine == "server-times")


SOCKET_MODES = ["stream", "hist", "floor", "serve/operation"]


@pytest.mark.parametrize("mode", SOCKET_MODES)
@pytest.mark.parametrize("text_bytes", [1024, 8192])
def test_postgres_socket_variants(pg, mode, text_bytes):
    require_root()
    from dbslower.discover import find_servers
    servers = find_servers("postgres", pids=[pg.pid])
    for filter_pids in (False, True):  # the socket method filters by PID either way (FOLLOW_EXEC without -p)
        got, sizes = load("postgres", servers, mode, text_bytes, filter_pids, method="socket")
        assert got == "socket" and set(sizes) - {"fp_chunk"} == {"tracepoint__syscalls__sys_exit_recvfrom",
                                                                  "tracepoint__syscalls__sys_enter_sendto"}


@pytest.mark.parametrize("mode", SOCKET_MODES)
@pytest.mark.parametrize("text_bytes", [1024, 8192])
def test_mysql_socket_variants(maria, mode, text_bytes):
    require_root()
    from dbslower.discover import find_servers
    servers = find_servers("mysql", pids=[maria.pid])
    for filter_pids in (False, True):  # without -p it also follows servers exec'd from the binary
        got, sizes = load("mysql", servers, mode, text_bytes, filter_pids, method="socket")
        assert got == "socket" and set(sizes) - {"fp_chunk"} == {"tracepoint__syscalls__sys_exit_recvfrom",
                                                                  "tracepoint__syscalls__sys_enter_sendto"}


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
@pytest.mark.parametrize("mode", ["digest", "top", "serve"])
def test_socket_method_refuses_digests(pg, maria, engine, mode):
    """Fingerprint digests need every text; serve keyed by operation does not."""
    from dbslower.discover import find_servers
    from dbslower.errors import UsageError
    from dbslower.plan import make_plan
    server = pg if engine == "postgres" else maria
    with pytest.raises(UsageError):
        make_plan(engine, find_servers(engine, pids=[server.pid]), mode=mode, method="socket")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("text_bytes", [1024, 8192])
def test_mysql_variants(maria, mysql_usdt, mysql57, mode, text_bytes, monkeypatch):
    require_root()
    from dbslower.discover import find_servers
    from dbslower.plan import FORCE_DISPATCH_ENV
    for fixture, method in ((maria, "uprobe"), (mysql_usdt, "usdt"), (mysql57, "uprobe")):
        servers = find_servers("mysql", pids=[fixture.pid])
        got, sizes = load("mysql", servers, mode, text_bytes, filter_pids=fixture is maria)
        assert got == method and sizes
        if fixture is maria:  # timed by the THD's own times: one probe per statement
            assert "my_slow_log" in sizes and "my_dispatch_entry" not in sizes
    # MySQL's machine (dispatch_command to Protocol::end_statement), on MariaDB
    monkeypatch.setenv(FORCE_DISPATCH_ENV, "1")
    got, sizes = load("mysql", find_servers("mysql", pids=[maria.pid]), mode, text_bytes, filter_pids=True)
    assert got == "uprobe" and {"my_dispatch_entry", "my_stmt_end", "my_slow_log"} <= set(sizes)


def _link_types(tracer):
    """The kernel's type of each uprobe_multi link the tracer holds."""
    out = []
    for lt in tracer.loaded:
        for fd in lt.links:
            info = open(f"/proc/self/fdinfo/{fd}").read()
            out.append(info.split("link_type:", 1)[1].split()[0])
    return out


@pytest.mark.parametrize("perf_uprobes", [False, True], ids=["links", "perf-events"])
def test_both_ways_of_attaching_uprobes(pg, maria, mysql_usdt, monkeypatch, perf_uprobes):
    """uprobe_multi links (Linux 6.6+), and one perf event per site (older
    kernels, or DBSLOWER_PERF_UPROBES=1): every probe method, with the
    tail-called fingerprint program (digest) and without (serve by operation)."""
    require_root()
    from dbslower.discover import find_servers
    from dbslower.load import PERF_UPROBES_ENV, Tracer, uprobe_multi_supported
    from dbslower.plan import make_plan
    if perf_uprobes:
        monkeypatch.setenv(PERF_UPROBES_ENV, "1")
    else:
        assert uprobe_multi_supported(), "this kernel should take uprobe_multi links"
    cases = [("postgres", pg, None, "usdt"), ("postgres", pg, "test: the uprobe variant", "uprobe"),
             ("mysql", maria, None, "uprobe"), ("mysql", mysql_usdt, None, "usdt")]
    for engine, server, no_usdt, method in cases:
        for mode, digest_key in (("digest", "fingerprint"), ("serve", "operation")):
            plan = make_plan(engine, find_servers(engine, pids=[server.pid]), threshold_ns=0, mode=mode,
                             no_usdt=no_usdt, digest_key=digest_key)
            assert plan.targets[0].method == method
            with Tracer(plan) as tracer:
                sites = sum(p.kind != "tracepoint" for p in plan.targets[0].probes)
                perf = sum(len(lt.bpf.uprobe_fds) for lt in tracer.loaded)
                if perf_uprobes:
                    assert _link_types(tracer) == [] and perf >= sites, (engine, method, mode)
                else:
                    assert perf == 0 and _link_types(tracer) == ["uprobe_multi"] * sites, (engine, method, mode)
