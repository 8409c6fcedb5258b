"""Just enough ELF64 reading to plan probes: exported symbols and USDT notes.

The format is the System V gABI; USDT notes follow SystemTap's
"stapsdt" note layout (type 3: pc, base, semaphore, then provider, name and
argument strings). Only little-endian ELF64 is handled, which covers x86_64
and aarch64.
"""

import mmap
import re
import struct
from dataclasses import dataclass

SHT_SYMTAB = 2
SHT_NOTE = 7
SHT_DYNSYM = 11
STT_FUNC = 2
STT_OBJECT = 1
NT_STAPSDT = 3


class ElfError(Exception):
    pass


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int
    size: int
    kind: int  # STT_*


@dataclass(frozen=True)
class UsdtProbe:
    provider: str
    name: str
    pc: int
    semaphore: int
    args: str


@dataclass
class Section:
    name: str
    type: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


class ElfFile:
    def __init__(self, path):
        self.path = path
        try:
            with open(path, "rb") as f:
                self._data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise ElfError(f"cannot read {path}: {e}") from e
        d = self._data
        if d[:4] != b"\x7fELF":
            raise ElfError(f"{path} is not an ELF file")
        if d[4] != 2 or d[5] != 1:
            raise ElfError(f"{path} is not a little-endian 64-bit ELF file")
        (self.e_type,) = struct.unpack_from("<H", d, 16)
        shoff, = struct.unpack_from("<Q", d, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", d, 0x3A)
        raw = []
        for i in range(shnum):
            off = shoff + i * shentsize
            (name, typ, _flags, addr, offset, size, link, _info, _align,
             entsize) = struct.unpack_from("<IIQQQQIIQQ", d, off)
            raw.append((name, typ, addr, offset, size, link, entsize))
        strtab = raw[shstrndx] if shstrndx < len(raw) else None
        self.sections = []
        for name, typ, addr, offset, size, link, entsize in raw:
            sname = self._cstr(strtab[3] + name) if strtab else ""
            self.sections.append(Section(sname, typ, addr, offset, size, link, entsize))
        self._symbols = None

    def close(self):
        self._data.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _cstr(self, off):
        end = self._data.find(b"\0", off)
        return self._data[off:end].decode("utf-8", "replace")

    def symbols(self):
        """Defined function and object symbols from .dynsym and .symtab, by name."""
        if self._symbols is None:
            syms = {}
            for sec in self.sections:
                if sec.type not in (SHT_DYNSYM, SHT_SYMTAB) or not sec.entsize:
                    continue
                strsec = self.sections[sec.link]
                for off in range(sec.offset, sec.offset + sec.size, sec.entsize):
                    name, info, _other, shndx, value, size = struct.unpack_from("<IBBHQQ", self._data, off)
                    kind = info & 0xF
                    if not name or shndx == 0 or kind not in (STT_FUNC, STT_OBJECT):
                        continue
                    sname = self._cstr(strsec.offset + name)
                    syms.setdefault(sname, Symbol(sname, value, size, kind))
            self._symbols = syms
        return self._symbols

    def usdt_probes(self):
        probes = []
        for sec in self.sections:
            if sec.type != SHT_NOTE or sec.name != ".note.stapsdt":
                continue
            off, end = sec.offset, sec.offset + sec.size
            while off + 12 <= end:
                namesz, descsz, ntype = struct.unpack_from("<III", self._data, off)
                name_off = off + 12
                desc_off = name_off + ((namesz + 3) & ~3)
                off = desc_off + ((descsz + 3) & ~3)
                owner = bytes(self._data[name_off:name_off + namesz]).rstrip(b"\0")
                if owner != b"stapsdt" or ntype != NT_STAPSDT:
                    continue
                pc, _base, sem = struct.unpack_from("<QQQ", self._data, desc_off)
                strs = bytes(self._data[desc_off + 24:desc_off + descsz]).split(b"\0")
                provider, pname, args = (s.decode("utf-8", "replace") for s in (strs + [b"", b"", b""])[:3])
                probes.append(UsdtProbe(provider, pname, pc, sem, args))
        return probes

    def file_offset(self, vaddr):
        """File offset of a virtual address, or None (not in the file)."""
        for sec in self.sections:
            if sec.type != 8 and sec.addr and sec.addr <= vaddr < sec.addr + sec.size:  # 8 = NOBITS
                return sec.offset + (vaddr - sec.addr)
        return None

    def find_bytes(self, pattern):
        """First match of a regex over the whole file (used for version strings)."""
        m = re.search(pattern, self._data)
        return m.groups() if m else None

    def read_at_vaddr(self, vaddr, n):
        """n bytes of file content at virtual address vaddr, or None."""
        off = self.file_offset(vaddr)
        return None if off is None else bytes(self._data[off:off + n])
