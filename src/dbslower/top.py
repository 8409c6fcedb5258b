"""`dbslower top`: a full-screen live view, a sink of the pipeline.

The frame is built as plain text lines by Frame.render(), so `--once` and
the curses screen show the same thing and tests can read either. curses
(Python's standard library) paints it and reads the keys; attributes are
only emphasis: every state (sort column, pause, filter) is also spelled out.

Data: the kernel aggregates per fingerprint (digest mode), read once per
refresh; statements over the slow threshold also arrive as events, for the
slow pane. Nothing per statement happens in Python.
"""

import collections
import curses
import locale
import os
import time

from dbslower.discover import ENGINE_LABEL
from dbslower.output import escape_control

ENGINE_SHORT = {"postgres": "PG", "mysql": "MY"}
# key -> (column heading, row sort key, description); as top, one key each.
SORTS = {
    "t": ("TIME%", lambda r: r["total_ms"], "total time"),
    "c": ("CALLS/S", lambda r: r["calls"], "calls"),
    "a": ("MEAN", lambda r: r["mean_ms"] or 0, "mean"),
    "5": ("P95", lambda r: r["p95_ms"] or 0, "p95"),
    "p": ("P99", lambda r: r["p99_ms"] or 0, "p99"),
    "x": ("MAX", lambda r: r["max_ms"] or 0, "max"),
    "e": ("ERR", lambda r: r["failed"], "errors"),
}
SPARK = " .:-=+*#%@"  # ASCII levels: readable in any terminal and locale
HISTORY_S = 60
SLOW_KEEP = 200           # slow statements kept for the pane
SLOW_MIN_MS = 0.01
HELP = ("keys: t c a 5 p x e sort (total, calls, mean, p95, p99, max, errors)  / filter  "
        "space pause  s slow pane  + - slow threshold  q quit")


def fmt_ms(v):
    if v is None:
        return "-"
    if v < 10:
        return f"{v:.3f}"
    if v < 1000:
        return f"{v:.1f}"
    return f"{v:.0f}"


def fmt_rate(v):
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def sparkline(values, width):
    values = list(values)[-width:]
    top = max(values) if values else 0
    if not top:
        return "_" * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int(round(v / top * (len(SPARK) - 1))))] for v in values)


def _fit(text, width):
    return text if len(text) <= width else text[:max(0, width - 1)] + "~"


class Frame:
    """The view's state and its rendering to text."""

    def __init__(self, engines, interval_s, slow_ms, sort="t"):
        self.engines = engines
        self.interval_s = interval_s
        self.slow_ms = slow_ms
        self.sort = sort
        self.filter = ""
        self.editing = None       # the filter being typed, or None
        self.paused = False
        self.show_slow = False
        self.show_help = False
        self.reports = {}         # engine -> latest aggregate.Report
        self.history = {e: collections.deque(maxlen=max(2, int(HISTORY_S / interval_s))) for e in engines}
        self.slow = collections.deque(maxlen=SLOW_KEEP)
        self.updated = None

    # -- data ---------------------------------------------------------------
    def add_reports(self, reports):
        for r in reports:
            self.reports[r.engine] = r
            self.history[r.engine].append(r.count / r.seconds())
        self.updated = time.time()

    def add_slow(self, ev):
        self.slow.append(ev)

    def matches(self, text, contexts=(), engine=""):
        if not self.filter:
            return True
        f = self.filter.lower()
        hay = [text or "", ENGINE_LABEL.get(engine, engine)]
        hay += [x for ctx in contexts for x in ctx if x]
        return any(f in h.lower() for h in hay)

    def rows(self):
        out = []
        for engine, r in self.reports.items():
            for row in r.rows:
                if self.matches(row["fingerprint"], row.get("contexts", ()), engine) or \
                        self.matches(row["sample"] or "", (), engine):
                    out.append((engine, r, row))
        key = SORTS[self.sort][1]
        out.sort(key=lambda x: (-key(x[2]), x[2]["fingerprint_id"]))
        return out

    # -- rendering ----------------------------------------------------------
    def render(self, width, height=None):
        w = max(40, width)
        lines = []
        state = []
        if self.paused:
            state.append("PAUSED")
        stamp = time.strftime("%H:%M:%S", time.localtime(self.updated)) if self.updated else "--:--:--"
        title = (f"dbslower top {stamp}  every {self.interval_s:g}s  sort: {SORTS[self.sort][2]}  "
                 f"filter: {self.filter or 'none'}  slow >= {self.slow_ms:g} ms")
        if state:
            title += "  [" + " ".join(state) + "]"
        lines.append(_fit(title, w))
        for engine in self.engines:
            r = self.reports.get(engine)
            label = f"{ENGINE_LABEL[engine]:<13}"
            if r is None:
                lines.append(_fit(f"{label} waiting for the first {self.interval_s:g} s...", w))
                continue
            secs = r.seconds()
            p50, p95, p99 = (None if v is None else v / 1e6 for v in r.percentiles())
            head = (f"{label} {fmt_rate(r.count / secs)} stmt/s  {fmt_rate(r.failed / secs)} err/s  "
                    f"p50 {fmt_ms(p50)} p95 {fmt_ms(p95)} p99 {fmt_ms(p99)} ms  lost {r.lost}  {r.method}")
            lines.append(_fit(head, w))
            hist = self.history[engine]
            spark_w = max(10, w - 32)
            lines.append(_fit(f"  last {HISTORY_S}s stmt/s |{sparkline(hist, spark_w)}| "
                              f"max {fmt_rate(max(hist) if hist else 0)}", w))
        if self.show_help:
            lines.append(_fit(HELP, w))
        rows = self.rows()
        heads = [("CALLS/S", 7), ("TIME%", 6), ("MEAN", 7), ("P95", 7), ("P99", 7), ("MAX", 7), ("ERR", 4)]
        engine_col = len(self.engines) > 1
        sorted_head = SORTS[self.sort][0]
        cols = " ".join(f"{(h + '*' if h == sorted_head else h):>{n}}" for h, n in heads)
        lines.append(_fit(f"{cols}{' EN' if engine_col else ''} QUERY (ms; * = sort column)", w))
        slow_lines = self.render_slow(w) if self.show_slow else []
        if height is None:
            room = len(rows)
        else:
            room = max(1, height - len(lines) - len(slow_lines) - 1)
        for engine, r, row in rows[:room]:
            secs = r.seconds()
            cells = [fmt_rate(row["calls"] / secs), f"{row['pct']:.1f}", fmt_ms(row["mean_ms"]),
                     fmt_ms(row["p95_ms"]), fmt_ms(row["p99_ms"]), fmt_ms(row["max_ms"]), str(row["failed"])]
            text = " ".join(f"{c:>{n}}" for c, (_, n) in zip(cells, heads))
            tag = f" {ENGINE_SHORT[engine]}" if engine_col else ""
            lines.append(_fit(f"{text}{tag} {escape_control(row['fingerprint'])}", w))
        if not rows:
            lines.append("  (no statements in the last interval" + (" matching the filter)" if self.filter else ")"))
        if len(rows) > room:
            lines.append(_fit(f"  ... {len(rows) - room} more fingerprints", w))
        lines += slow_lines
        if self.editing is not None:
            lines.append(_fit(f"filter (Enter to apply, Esc to cancel): {self.editing}_", w))
        elif height is not None:
            lines.append(_fit("h help  q quit", w))
        if height is not None:
            lines = lines[:height]
        return lines

    def render_slow(self, w, limit=None):
        shown = [ev for ev in reversed(self.slow)
                 if ev.duration_ns >= self.slow_ms * 1e6
                 and self.matches(ev.query, [(ev.context[0], ev.context[1])], ev.engine)]
        lines = [_fit(f"--- slow statements >= {self.slow_ms:g} ms, newest first "
                      f"({len(shown)} kept; + - change the threshold) ---", w)]
        for ev in shown[:limit or 8]:
            user, db = ev.context[0] or "-", ev.context[1] or "-"
            head = (f"{time.strftime('%H:%M:%S', time.localtime(ev.start_ns / 1e9))} "
                    f"{ENGINE_SHORT[ev.engine]} {ev.duration_ns / 1e6:10.3f} ms "
                    f"{('ERROR ' + (ev.error_code + ' ' if ev.error_code else '')) if ev.failed else ''}pid {ev.pid} {escape_control(user)}@{escape_control(db)}")
            lines.append(_fit(head, w))
            text = escape_control(ev.query) + (" [...]" if ev.truncated else "")
            for i in range(0, min(len(text), 3 * (w - 4)), w - 4):
                lines.append("    " + text[i:i + w - 4])
        return lines

    # -- keys ---------------------------------------------------------------
    def key(self, ch):
        """Applies one key; returns "quit", "slow" (threshold changed) or None."""
        if self.editing is not None:
            if ch in ("\n", "\r"):
                self.filter, self.editing = self.editing.strip(), None
            elif ch == "\x1b":
                self.editing = None
            elif ch in ("\x7f", "\b"):
                self.editing = self.editing[:-1]
            elif ch.isprintable():
                self.editing += ch
            return None
        if ch == "q":
            return "quit"
        if ch in SORTS:
            self.sort = ch
        elif ch == "/":
            self.editing = ""
        elif ch == " ":
            self.paused = not self.paused
        elif ch == "s":
            self.show_slow = not self.show_slow
        elif ch == "h" or ch == "?":
            self.show_help = not self.show_help
        elif ch == "+":
            self.slow_ms *= 2
            return "slow"
        elif ch == "-":
            self.slow_ms = max(SLOW_MIN_MS, self.slow_ms / 2)
            return "slow"
        return None


class OnceSink:
    """--once: after one interval, prints one frame as plain text."""

    def __init__(self, frame, out, width):
        self.frame = frame
        self.out = out
        self.width = width

    def on_event(self, ev):
        self.frame.add_slow(ev)

    def on_interval(self, reports):
        self.frame.add_reports(reports)
        self.frame.show_slow = bool(self.frame.slow)
        self.out.write("\n".join(self.frame.render(self.width)) + "\n")
        self.out.flush()
        return True


class ScreenSink:
    """The live curses screen. close() restores the terminal; the caller
    registers it so that it runs on every way out (q, Ctrl-C, SIGTERM, errors)."""

    def __init__(self, frame, set_slow_ns):
        self.frame = frame
        self.set_slow_ns = set_slow_ns
        self.scr = None

    def start(self):
        locale.setlocale(locale.LC_ALL, "")
        # The terminal's real size (ioctl), not a LINES/COLUMNS inherited from a parent.
        os.environ.pop("LINES", None)
        os.environ.pop("COLUMNS", None)
        self.scr = curses.initscr()
        curses.noecho()
        curses.cbreak()  # keys at once; Ctrl-C still raises SIGINT (handled by the stop flag)
        self.scr.keypad(True)
        self.scr.nodelay(True)
        try:
            curses.curs_set(0)
        except curses.error:
            pass
        self.draw()

    def close(self):
        if self.scr is not None:
            self.scr.keypad(False)
            curses.nocbreak()
            curses.echo()
            curses.endwin()
            self.scr = None

    def fds(self):
        return [0]

    def on_event(self, ev):
        self.frame.add_slow(ev)

    def on_interval(self, reports):
        if self.frame.paused:
            return False
        self.frame.add_reports(reports)
        self.draw()
        return False

    def poll(self):
        changed = False
        while self.scr is not None:
            try:
                ch = self.scr.get_wch()
            except curses.error:
                break
            if ch == curses.KEY_RESIZE:
                changed = True
                continue
            if isinstance(ch, int):
                ch = {curses.KEY_BACKSPACE: "\b", curses.KEY_ENTER: "\n"}.get(ch)
                if ch is None:
                    continue
            result = self.frame.key(ch)
            if result == "quit":
                return True
            if result == "slow":
                self.set_slow_ns(int(self.frame.slow_ms * 1e6))
            changed = True
        if changed:
            self.draw()
        return False

    def draw(self):
        if self.scr is None:
            return
        h, w = self.scr.getmaxyx()
        self.scr.erase()
        for y, line in enumerate(self.frame.render(w - 1, h)):
            attr = curses.A_REVERSE if y == 0 else curses.A_NORMAL
            try:
                self.scr.addnstr(y, 0, line, w - 1, attr)
            except (curses.error, UnicodeEncodeError):
                try:
                    self.scr.addnstr(y, 0, line.encode("ascii", "replace").decode(), w - 1, attr)
                except curses.error:
                    pass
        self.scr.refresh()
