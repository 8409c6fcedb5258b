"""Load and attach the BPF programs. The only module that imports bcc.

Third stage: takes a Plan, compiles bpf/<engine>.c once per server binary
with the plan's -D flags, attaches the probes, and exposes the maps the
decoder and the summaries read.
"""

import ctypes as ct
import os
import platform
import time
from pathlib import Path

from dbslower import abi
from dbslower.discover import file_key, list_processes
from dbslower.errors import AttachFailed, NoBPF, NoHeaders, NotRoot, PreflightFailed
from dbslower.plan import DIGEST_MODES, TRACE_INHERIT, TRACE_SELF, make_plan

BPF_DIR = Path(__file__).resolve().parent / "bpf"
# BPF_LINK_CREATE with attr.link_create.uprobe_multi (include/uapi/linux/bpf.h,
# Linux 6.6+): one link puts a program on every site of a binary at once.
# Closing it unregisters them all with one wait for the kernel's grace
# periods, outside the trace event mutex that serialises closing perf-event
# uprobes (about 80 ms each here: 14 probes of PostgreSQL and MariaDB took
# 1.2 s to detach, 7 links take 0.08 s).
_NR_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_LINK_CREATE = 28
_BPF_TRACE_UPROBE_MULTI = 48
_BPF_F_UPROBE_MULTI_RETURN = 1
_UPROBE_MULTI_SINCE = (6, 6)
PERF_UPROBES_ENV = "DBSLOWER_PERF_UPROBES"  # "1": attach each site as a perf-event uprobe
TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
CAP_SYS_ADMIN = 21


def _effective_caps():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


# bcc attaches uprobes through perf_event_open(2) with this PMU when it
# exists (Linux 4.17+), else through tracefs' uprobe_events.
UPROBE_PMU = "/sys/bus/event_source/devices/uprobe/type"


def _tracefs_state():
    """"ok", "unreadable" (mounted, but not for this user) or "missing"."""
    for d in TRACEFS_DIRS:
        try:
            os.stat(os.path.join(d, "uprobe_events"))
            return "ok"
        except PermissionError:
            return "unreadable"
        except OSError:
            continue
    return "missing"


def headers_dir():
    return Path("/lib/modules") / platform.release() / "build"


def headers_ok():
    """Where BCC looks for kernel headers (its KBuildHelper): $BCC_KERNEL_SOURCE,
    the kernel's own /sys/kernel/kheaders.tar.xz, or /lib/modules/RELEASE/build
    with its source/ (build/ itself when there is no source/)."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        return os.path.isdir(os.path.join(env, "include"))
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return True
    mod = Path("/lib/modules") / platform.release()
    source = mod / "source" if (mod / "source").exists() else mod / "build"
    return os.path.isdir(mod / "build" / "include") and os.path.exists(source / "include" / "linux" / "kconfig.h")


def preflight():
    """Every reason tracing cannot start, at once."""
    problems = []
    caps = _effective_caps()
    if os.geteuid() != 0 and not caps >> CAP_SYS_ADMIN & 1:
        problems.append(NotRoot("dbslower must run as root, or with CAP_SYS_ADMIN (uprobes), "
                                "CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"))
    tracefs = _tracefs_state()
    if tracefs == "unreadable":
        problems.append(NoBPF("tracefs is mounted but this user cannot read it (tracepoints are found there)",
                              "run as root, or grant CAP_DAC_READ_SEARCH as contrib/dbslower.service does"))
    elif tracefs == "missing":
        what = "tracepoints (-p, serve)" if os.path.exists(UPROBE_PMU) else "uprobes and tracepoints"
        problems.append(NoBPF(f"tracefs is not mounted (no uprobe_events): {what} are unavailable",
                              "mount it with 'mount -t tracefs tracefs /sys/kernel/tracing'; "
                              "the kernel needs CONFIG_UPROBE_EVENTS"))
    if not os.path.exists("/proc/sys/kernel/unprivileged_bpf_disabled"):
        problems.append(NoBPF("this kernel has no BPF system call (CONFIG_BPF_SYSCALL)"))
    if not headers_ok():
        problems.append(NoHeaders(f"kernel headers for {platform.release()} are missing ({headers_dir()})"))
    try:
        import bcc  # noqa: F401
    except ImportError:
        problems.append(NoBPF("the BCC Python module (python3-bpfcc) cannot be imported",
                              "install python3-bpfcc and run dbslower with /usr/bin/python3 or the project venv"))
    if problems:
        raise PreflightFailed(problems)


# (st_dev, st_ino, location) -> semaphore file offset, for USDT probes
_REF_CTRS = {}


def _fix_bcc_attach_uprobe(lib):
    """bcc 0.26's binding declares bpf_attach_uprobe with 6 argument types,
    but libbcc's function takes a 7th, ref_ctr_offset, which is then read from
    stack garbage and makes attaches fail at random (bcc issue #5236). Declare
    all 7 and pass the semaphore's offset for USDT probes that have one
    (bcc's Python USDT attach never does), so the kernel sets it."""
    fn = lib.bpf_attach_uprobe
    if getattr(fn, "_dbslower_fixed", False):
        return
    if len(fn.argtypes or ()) == 6:
        fn.argtypes = list(fn.argtypes) + [ct.c_uint32]

    def attach(*args):
        if len(args) == 6:
            path, addr = args[3], args[4]
            key = file_key(path.decode() if isinstance(path, bytes) else path)
            args = args + (_REF_CTRS.get((*key, addr), 0) if key else 0,)
        return fn(*args)

    attach._dbslower_fixed = True
    attach.argtypes = fn.argtypes
    lib.bpf_attach_uprobe = attach


def _DeferredUSDT(bcc):
    """A USDT context whose probes bcc's BPF() records instead of attaching
    one perf event per site: they are linked with the uprobes."""
    class DeferredUSDT(bcc.USDT):
        sites = ()

        def attach_uprobes(self, bpf, attach_usdt_ignore_pid):
            self.sites = self.enumerate_active_probes()
    return DeferredUSDT


class UsdtUnavailable(AttachFailed):
    """bcc could not enable a binary's USDT probes: it writes semaphores
    through /proc/PID/mem, which needs CAP_DAC_OVERRIDE for a server of
    another user, and a probe held by another tool can refuse too."""


def load_plan(engine, servers, **plan_args):
    """Plans and loads; where USDT probes cannot be enabled, plans again with
    the exported functions instead. Returns (plan, opened Tracer)."""
    plan = make_plan(engine, servers, **plan_args)
    try:
        return plan, Tracer(plan).open()
    except UsdtUnavailable as e:
        plan = make_plan(engine, servers, no_usdt=f"USDT probes could not be enabled ({e})", **plan_args)
        return plan, Tracer(plan).open()


def program_text(flags, sources):
    head = abi.c_header() + "".join(f"#define {k} {v}\n" for k, v in sorted(flags.items()))
    parts = [head]
    for name in sources:
        parts.append(f'#line 1 "{name}"\n' + (BPF_DIR / name).read_text())
    return "".join(parts)


class _LinkCreateUprobeMulti(ct.Structure):
    """The leading part of union bpf_attr that BPF_LINK_CREATE reads for a
    uprobe_multi link; the kernel takes a shorter attr as zero-filled."""
    _fields_ = [("prog_fd", ct.c_uint32), ("target_fd", ct.c_uint32), ("attach_type", ct.c_uint32),
                ("flags", ct.c_uint32), ("path", ct.c_uint64), ("offsets", ct.c_uint64),
                ("ref_ctr_offsets", ct.c_uint64), ("cookies", ct.c_uint64), ("cnt", ct.c_uint32),
                ("multi_flags", ct.c_uint32), ("pid", ct.c_uint32), ("pad", ct.c_uint32)]


def uprobe_multi_supported():
    """Whether probes are attached as uprobe_multi links (else perf events)."""
    if os.environ.get(PERF_UPROBES_ENV) == "1" or platform.machine() not in _NR_BPF:
        return False
    try:
        release = tuple(int(x) for x in platform.release().split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return release >= _UPROBE_MULTI_SINCE


def _link_uprobe_multi(prog_fd, path, offsets, ref_ctrs, ret):
    """One link for a program on these file offsets of path; its fd."""
    libc = ct.CDLL(None, use_errno=True)
    path_buf = ct.create_string_buffer(path)
    offs = (ct.c_uint64 * len(offsets))(*offsets)
    refs = (ct.c_uint64 * len(offsets))(*ref_ctrs) if any(ref_ctrs) else None
    attr = _LinkCreateUprobeMulti(prog_fd=prog_fd, attach_type=_BPF_TRACE_UPROBE_MULTI,
                                  path=ct.addressof(path_buf), offsets=ct.addressof(offs),
                                  ref_ctr_offsets=ct.addressof(refs) if refs is not None else 0,
                                  cnt=len(offsets), multi_flags=_BPF_F_UPROBE_MULTI_RETURN if ret else 0)
    fd = libc.syscall(_NR_BPF[platform.machine()], _BPF_LINK_CREATE, ct.byref(attr), ct.sizeof(attr))
    if fd < 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


class LoadedTarget:
    def __init__(self, target, bpf, text, links=()):
        self.target = target
        self.bpf = bpf
        self.text = text
        self.links = list(links)  # uprobe_multi link fds, closed by close_tracers()

    @property
    def ring_fd(self):
        return self.bpf["events"].map_fd


def _percpu_sums(table):
    return [sum(table[ct.c_int(i)]) for i in range(len(table))]


def _percpu_items(table):
    for i in range(len(table)):
        yield i, table[ct.c_int(i)]


def _stats(v):
    """A digest_stats leaf as the tuple abi.add_stats takes."""
    return v.calls, v.total_ns, v.max_ns, v.failed, v.failed_ns


def _int(v):
    return v if isinstance(v, int) else v.value


def _cpu_values(table, leaf):
    """A leaf's values, one per CPU for a per-CPU table (its Leaf is an array)."""
    from bcc.table import PerCpuHash
    return list(leaf) if isinstance(table, PerCpuHash) else [leaf]


def _hash_items(table):
    """Batched lookups where the kernel has them (5.6+), else one by one.
    The values of a per-CPU table come as a list, one per CPU."""
    try:
        items = list(table.items_lookup_batch())
    except Exception:
        items = list(table.items())
    return [(k, _cpu_values(table, v)) for k, v in items]


class Tracer:
    """Owns the BPF objects. Use as a context manager: close() detaches."""

    def __init__(self, plan):
        self.plan = plan
        self.loaded = []
        self._capacity = None

    def program_text(self, target):
        """The one C text compiled for a target (and printed by -v): the
        shared constants, the plan's configuration, then the target's
        fragments, each behind a #line marker so that compiler messages
        name the fragment and its line."""
        return program_text(self.plan.cflags(target), target.sources)

    def open(self):
        try:
            import bcc
            from bcc import libbcc
        except ImportError as e:
            raise NoBPF(f"cannot import bcc: {e}") from e
        _fix_bcc_attach_uprobe(libbcc.lib)
        try:
            for target in self.plan.targets:
                self.loaded.append(self._load(bcc, target))
            self._seed_pids()
            self._mark_traced_since()
        except BaseException:
            self.close()
            raise
        return self

    def _load(self, bcc, target):
        cflags = [f"-I{BPF_DIR}"]
        text = self.program_text(target)
        usdt = []
        key = file_key(target.binary.path)
        if key:
            for addr, ref in target.ref_ctrs.items():
                _REF_CTRS[(*key, addr)] = ref
        multi = uprobe_multi_supported()
        if target.method == "usdt":
            try:
                u = (_DeferredUSDT(bcc) if multi else bcc.USDT)(pid=target.usdt_pid)
                for p in target.probes:
                    if p.kind == "usdt":
                        u.enable_probe(probe=p.site, fn_name=p.fn)
            except Exception as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UsdtUnavailable(f"cannot enable USDT probes in PID {target.usdt_pid}: {first}") from e
            usdt = [u]
        if not headers_ok():
            raise NoHeaders(f"kernel headers for {platform.release()} are missing")
        try:
            b = bcc.BPF(text=text.encode(), cflags=cflags,
                        usdt_contexts=usdt, attach_usdt_ignore_pid=True)
        except Exception as e:
            if usdt and not multi and "attach" in str(e):
                # bcc attaches USDT sites in BPF(): the kernel refuses a site
                # whose semaphore another tool set without the kernel's help
                # (bcc's trace writes it through /proc/PID/mem).
                raise UsdtUnavailable(f"cannot attach USDT probes in {target.binary.path}: {e}; "
                                      "another tool may be tracing them") from e
            raise AttachFailed(f"cannot load the BPF program for {target.binary.path}: {e}",
                               "run with -v to see the program; check the kernel headers") from e
        # A tail call needs caller and callee loaded with the same program
        # and attach type (kernel/bpf/core.c, bpf_prog_map_compatible): the
        # socket methods call fp_chunk from syscall tracepoints.
        if target.method == "socket":
            prog_type, attach_type = bcc.BPF.TRACEPOINT, -1
        else:
            prog_type, attach_type = bcc.BPF.KPROBE, (_BPF_TRACE_UPROBE_MULTI if multi else -1)
        if self.plan.mode in DIGEST_MODES:
            try:
                chunk = b.load_func(b"fp_chunk", prog_type, attach_type=attach_type)
                b["fp_chain"][ct.c_int(0)] = ct.c_int(chunk.fd)
                if target.cflags.get("DIGEST_TP_CHAIN"):
                    chunk = b.load_func(b"fp_chunk_tp", bcc.BPF.TRACEPOINT)
                    b["fp_chain_tp"][ct.c_int(0)] = ct.c_int(chunk.fd)
            except Exception as e:
                b.cleanup()
                raise AttachFailed(f"cannot load the fingerprint program for {target.binary.path}: {e}",
                                   "run with -v to see the program") from e
        if multi:
            return LoadedTarget(target, b, text, self._link_sites(bcc, b, target, usdt))
        try:
            for p in target.probes:
                if p.kind == "uprobe":
                    b.attach_uprobe(name=target.binary.path.encode(), sym=p.site.encode(), fn_name=p.fn.encode())
                elif p.kind == "uretprobe":
                    b.attach_uretprobe(name=target.binary.path.encode(), sym=p.site.encode(), fn_name=p.fn.encode())
        except Exception as e:
            b.cleanup()
            raise AttachFailed(f"cannot attach to {p.site} in {target.binary.path}: {e}") from e
        return LoadedTarget(target, b, text)

    def _link_sites(self, bcc, b, target, usdt):
        """Attaches every uprobe, uretprobe and USDT site of a target: one
        uprobe_multi link per program and binary, the USDT semaphores set by
        the kernel as for perf-event uprobes."""
        path = target.binary.path.encode()
        sites = {}  # (fn, path, return probe?) -> [(file offset, semaphore offset)]
        links = []
        try:
            for p in target.probes:
                if p.kind in ("uprobe", "uretprobe"):
                    where, off = bcc.BPF._check_path_symbol(path, p.site.encode(), None, -1)
                    sites.setdefault((p.fn.encode(), where, p.kind == "uretprobe"), []).append((off, 0))
            for u in usdt:
                for binpath, fn, addr, _pid in u.sites:
                    where, off = bcc.BPF._check_path_symbol(binpath, b"", addr, -1)
                    key = file_key(where.decode())
                    ref = _REF_CTRS.get((*key, off), 0) if key else 0
                    sites.setdefault((fn, where, False), []).append((off, ref))
            usdt_fns = {fn for u in usdt for _, fn, _, _ in u.sites}
            for (fn, where, ret), offs in sites.items():
                prog = b.load_func(fn, bcc.BPF.KPROBE, attach_type=_BPF_TRACE_UPROBE_MULTI)
                try:
                    links.append(_link_uprobe_multi(prog.fd, where, [o for o, _ in offs], [r for _, r in offs], ret))
                except OSError as e:
                    if fn in usdt_fns and any(r for _, r in offs):
                        # The kernel refuses a site whose semaphore another tool
                        # set without its help (bcc's trace writes it through
                        # /proc/PID/mem): EINVAL, "ref_ctr_offset mismatch".
                        raise UsdtUnavailable(f"cannot attach USDT probes in {target.binary.path}: {e.strerror}; "
                                              "another tool may be tracing them") from e
                    raise AttachFailed(f"cannot attach {fn.decode()} in {target.binary.path}: {e.strerror}",
                                       f"on kernels where uprobe_multi links fail, set {PERF_UPROBES_ENV}=1") from e
        except BaseException:
            for fd in links:
                os.close(fd)
            b.cleanup()
            raise
        return links

    def attached_as(self, target):
        """How a target's uprobe and USDT sites are attached, for -v."""
        for lt in self.loaded:
            if lt.target is target:
                if lt.links:
                    return f"{len(lt.links)} uprobe_multi links (set {PERF_UPROBES_ENV}=1 for perf events)"
                if lt.bpf.uprobe_fds:
                    return f"{len(lt.bpf.uprobe_fds)} perf-event uprobes"
                return "syscall tracepoints only"
        return "not attached"

    def _mark_traced_since(self):
        """Tells PostgreSQL's server-times machine when every probe was
        attached, on the server's clock (bpf/postgres.bpf.c, pg_traced_since)."""
        for lt in self.loaded:
            if self.plan.cflags(lt.target).get("PG_SERVER_TIMES"):
                lt.bpf["pg_traced_since"][ct.c_int(0)] = ct.c_ulonglong(time.time_ns())

    def _seed_pids(self):
        if not self.plan.filter_pids:
            return
        pids = dict(self.plan.filter_pids)
        # Backends forked between discovery and the fork tracepoint's attach.
        inherit = {p for p, m in pids.items() if m == TRACE_INHERIT}
        if inherit:
            for proc in list_processes().values():
                if proc.ppid in inherit:
                    pids.setdefault(proc.pid, TRACE_SELF)
        for lt in self.loaded:
            t = lt.bpf["traced_pids"]
            for pid, mode in pids.items():
                t[ct.c_uint32(pid)] = ct.c_uint8(mode)
            if self.plan.follow_exec:
                f = lt.bpf["follow_exec"]
                for path, mode in self.plan.follow_exec.items():
                    raw = os.fsencode(path)
                    if len(raw) < abi.EXEC_PATH_BYTES:  # longer paths are found by rediscovery
                        f[f.Key(raw)] = ct.c_uint8(mode)

    def add_filter_pids(self, pids):
        """More processes for the kernel's PID filter: {pid: TRACE_*}."""
        if not self.plan.filter_pids:
            return
        for lt in self.loaded:
            t = lt.bpf["traced_pids"]
            for pid, mode in pids.items():
                t[ct.c_uint32(pid)] = ct.c_uint8(mode)

    def counters(self):
        total = None
        for lt in self.loaded:
            c = _percpu_sums(lt.bpf["counters"])
            total = c if total is None else [a + b for a, b in zip(total, c)]
        return total or []

    def set_slow_threshold(self, threshold_ns):
        """top: stream statements at least this slow (the map holds ns + 1,
        so that 0 can mean "not set yet": nothing is streamed before this)."""
        for lt in self.loaded:
            lt.bpf["slow_ns"][ct.c_int(0)] = ct.c_uint64(threshold_ns + 1)

    def read_hist(self):
        """Cumulative ({bucket: count}, failed, max_ns) over every program."""
        counts, failed, max_ns = {}, 0, 0
        for lt in self.loaded:
            h = lt.bpf["hist"]
            for b, per_cpu in _percpu_items(h):
                n = sum(per_cpu)
                if n:
                    counts[b] = counts.get(b, 0) + n
            extra = lt.bpf["hist_extra"]
            failed += sum(extra[ct.c_int(0)])
            max_ns = max([max_ns] + list(extra[ct.c_int(1)]))
        return counts, failed, max_ns

    def read_digest_maps(self):
        """Cumulative, over every program: {(fp, db_id, server_id): [calls,
        total_ns, max_ns, failed, failed_ns]} and {(fp, db_id, server_id,
        failed): {bucket: count}}."""
        stats, hists = {}, {}
        for lt in self.loaded:
            # The overflow maps' entries have fp 0: counted while `digests` was full.
            for name in ("digests", "digest_overflow"):
                for k, values in _hash_items(lt.bpf[name]):
                    row = stats.setdefault((k.fp, k.db_id, k.server_id), [0, 0, 0, 0, 0])
                    for v in values:
                        abi.add_stats(row, _stats(v))
            for name in ("digest_hist", "overflow_hist"):
                for k, values in _hash_items(lt.bpf[name]):
                    h = hists.setdefault((k.fp, k.db_id, k.server_id, k.failed), {})
                    h[k.bucket] = h.get(k.bucket, 0) + sum(_int(v) for v in values)
        return stats, hists

    def digest_capacity(self):
        """(entries of `digests`, entries of `digest_hist`) in each program."""
        if not self._capacity:
            lt = self.loaded[0]
            self._capacity = (lt.bpf["digests"].max_entries, lt.bpf["digest_hist"].max_entries)
        return self._capacity

    def take_digests(self, keys, hist_keys):
        """Removes these entries from the kernel's digest maps and returns
        their last values, each read and deleted in one step
        (BPF_MAP_LOOKUP_AND_DELETE_ELEM on a hash, Linux 5.14+), so no count
        between the read and the delete is lost. keys: (fp, db_id, server_id);
        hist_keys: (fp, db_id, server_id, failed, bucket)."""
        from bcc import libbcc
        fn = libbcc.lib.bpf_lookup_and_delete
        fn.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
        stats, hists = {}, {}
        for lt in self.loaded:
            t, h = lt.bpf["digests"], lt.bpf["digest_hist"]
            for key in keys:
                k, v = t.Key(), t.Leaf()
                k.fp, k.db_id, k.server_id = key
                if fn(t.map_fd, ct.byref(k), ct.byref(v)) == 0:
                    row = stats.setdefault(key, [0, 0, 0, 0, 0])
                    for cpu_v in _cpu_values(t, v):
                        abi.add_stats(row, _stats(cpu_v))
            for key in hist_keys:
                k, v = h.Key(), h.Leaf()
                k.fp, k.db_id, k.server_id, k.failed, k.bucket = key
                if fn(h.map_fd, ct.byref(k), ct.byref(v)) == 0:
                    hists[key] = hists.get(key, 0) + sum(_int(x) for x in _cpu_values(h, v))
        return stats, hists

    def seed_procs(self, procs):
        """SERVER_IDS: {pid: (address of MyDatabaseId or 0, address of the
        application_name GUC or 0, server id)}."""
        for lt in self.loaded:
            if not self.plan.cflags(lt.target).get("SERVER_IDS"):
                continue
            t = lt.bpf["procs"]
            for pid, (addr, app, server_id) in procs.items():
                v = t.Leaf()
                v.db_id_addr, v.app_name_addr, v.server_id = addr, app, server_id
                t[ct.c_uint32(pid)] = v

    def close(self):
        close_tracers([self])

    def _cleanup(self):
        for lt in self.loaded:
            try:
                lt.bpf.cleanup()
            except Exception:
                pass
        self.loaded = []

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()


def close_tracers(tracers):
    """Detaches every probe of these tracers at once (serve holds one per
    server binary: closed one after another, PostgreSQL's and MariaDB's took
    1.3 s, past the second a stop request is allowed), then frees them."""
    loaded = [lt for t in tracers for lt in t.loaded]
    detach_together([lt.bpf for lt in loaded], [fd for lt in loaded for fd in lt.links])
    for lt in loaded:
        lt.links = []
    for t in tracers:
        t._cleanup()


def detach_together(bpfs, links=()):
    """Close every probe of these programs (and their uprobe_multi links)
    from threads before bcc's cleanup(), which closes them one after another.
    Releasing a uprobe's or a tracepoint's perf event waits for RCU grace
    periods in the kernel (about 0.1 s each here, Linux 6.18), under the
    kernel's event mutex, so the waits overlap only in part: a PostgreSQL
    target (9 probes and 2 tracepoints) went from 1.0 to 0.77 s. Links wait
    outside that mutex, so theirs overlap. Both closes release the GIL."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(b.detach_uprobe_event, name) for b in bpfs for name in list(b.uprobe_fds)]
    jobs += [(b.detach_tracepoint, name) for b in bpfs for name in list(b.tracepoint_fds)]
    jobs += [(os.close, fd) for fd in links]
    if not jobs:
        return

    def detach(job):
        try:
            job[0](job[1])
        except Exception:
            pass  # cleanup() retries whatever is still attached

    with ThreadPoolExecutor(max_workers=min(len(jobs), 64)) as pool:
        list(pool.map(detach, jobs))
