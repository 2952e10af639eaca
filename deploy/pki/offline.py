"""An offline CA: carry a PKI directory, minus its CA key, to the coordinator host.

The CA key signs every certificate and CRL of the consortium. Kept on a host that is never
on a network (the *CA host*), it cannot be taken from the coordinator host, which faces the
silos. Everything else in the PKI directory is what the coordinator needs and may hold:
certificates, the CRL, the index, node keys, bundles, and the coordinator's own TLS keys.
:func:`sync_public` copies exactly that — every file but ``private/`` — from one PKI
directory to another (CA host → removable medium → coordinator host), so that after it the
destination matches the source:

* a file whose bytes differ is replaced atomically, keeping its permission bits (the
  coordinator's TLS keys stay 0600); private keys first, the CRL and the index last, so a
  running coordinator that looks in between never sees a certificate without its key;
* a file the source no longer has is removed (a revoked silo's ``nodes/NAME.pub`` moved to
  ``revoked/``: the running coordinator then unregisters it);
* folders are made as in the source (with its permission bits), none is removed;
* the destination's ``private/`` is never read, written or removed, and a destination
  that holds a CA key, or another CA's certificate, is refused;
* a destination that is, or holds, a symbolic link is refused before anything is written
  (a medium is not trusted: a link would carry writes and permission changes elsewhere),
  and each path is checked again just before it is written, removed or chmod-ed.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from xsilo.errors import EnrollmentError
from xsilo.files import atomic_write

__all__ = ["SyncReport", "sync_public"]

_PRIVATE = "private"
_LAST = ("crl.pem", "index.json")


@dataclass(frozen=True)
class SyncReport:
    """What :func:`sync_public` did."""

    written: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: int


def _files(root: Path) -> dict[str, Path]:
    """Relative name → path of every regular file under ``root`` but ``private/``."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d != _PRIVATE]
        for name in filenames:
            path = here / name
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):
                raise EnrollmentError(f"{path} is not a regular file (a link?): a PKI directory "
                                      "holds plain files only; remove it and sync again")
            found[path.relative_to(root).as_posix()] = path
    return found


def _order(name: str) -> tuple[int, str]:
    if name in _LAST:
        return (2 + _LAST.index(name), name)
    return (0 if name.endswith(".key") else 1, name)


def _check(src: Path, dest: Path) -> None:
    if not (src / "pki.json").is_file() or not (src / "ca.crt").is_file():
        raise EnrollmentError(f"{src} is not an xsilo PKI directory (no pki.json or ca.crt)")
    if src.resolve() == dest.resolve():
        raise EnrollmentError(f"--to {dest} is the PKI directory itself: give another one")
    if (dest / _PRIVATE / "ca.key").exists():
        raise EnrollmentError(
            f"{dest} holds a CA key ({dest / _PRIVATE / 'ca.key'}): `xsilo pki sync` copies a "
            "PKI *to* a host or medium that must not hold it. Sync from the CA host's PKI "
            "directory to the medium, then from the medium to the coordinator's")
    theirs = dest / "ca.crt"
    if theirs.exists() and theirs.read_bytes() != (src / "ca.crt").read_bytes():
        raise EnrollmentError(
            f"{dest} belongs to another CA ({theirs} differs from {src / 'ca.crt'}): a new CA "
            "is a new PKI directory (docs/security.md, \"Rotate the CA\"); sync into an empty "
            "directory instead")


def _link_refused(path: Path) -> EnrollmentError:
    return EnrollmentError(f"{path} is a symbolic link: `xsilo pki sync` writes only into "
                           "plain directories (a link would carry the PKI's files and "
                           "permissions elsewhere); remove the link, or sync to another "
                           "directory")


def _no_links_under(dest: Path) -> None:
    """Refuse ``dest`` if it, or anything under it but ``private/``, is a symbolic link (or
    anything else that is neither a plain file nor a folder: a FIFO would block a read)."""
    if dest.is_symlink():
        raise _link_refused(dest)
    for dirpath, dirnames, filenames in os.walk(dest):  # never follows links
        here = Path(dirpath)
        if here == dest:
            dirnames[:] = [d for d in dirnames if d != _PRIVATE]
        for name in (*dirnames, *filenames):
            info = (here / name).lstat()
            if stat.S_ISLNK(info.st_mode):
                raise _link_refused(here / name)
            if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
                raise EnrollmentError(f"{here / name} is not a regular file: a PKI directory "
                                      "holds plain files only; remove it and sync again")


def _plain(dest: Path, name: str) -> Path:
    """``dest / name``, once no part of it (from ``dest`` down) is a symbolic link."""
    parts = Path(name).parts
    for depth in range(len(parts) + 1):
        if dest.joinpath(*parts[:depth]).is_symlink():
            raise _link_refused(dest.joinpath(*parts[:depth]))
    return dest.joinpath(*parts)


def sync_public(src: Path, dest: Path) -> SyncReport:
    """Make ``dest`` hold exactly the files of the PKI directory ``src`` except its CA key
    (module docstring: order, permissions, what is refused)."""
    src, dest = Path(src), Path(dest)
    _no_links_under(dest)
    _check(src, dest)
    want = _files(src)
    have = _files(dest) if dest.is_dir() else {}
    written, unchanged = [], 0
    for name in sorted(want, key=_order):
        data = want[name].read_bytes()
        mode = stat.S_IMODE(want[name].stat().st_mode)
        target = _plain(dest, name)
        if name in have and target.read_bytes() == data:
            unchanged += 1
            if stat.S_IMODE(target.lstat().st_mode) != mode:
                os.chmod(target, mode)
            continue
        atomic_write(target, data, mode=mode)
        written.append(name)
    removed = sorted(set(have) - set(want))
    for name in removed:
        _plain(dest, name).unlink()
    for folder in _folders(src):  # empty ones too (nodes/ before the first approval)
        _plain(dest, folder).mkdir(parents=True, exist_ok=True)
        os.chmod(_plain(dest, folder), stat.S_IMODE((src / folder).stat().st_mode))
    return SyncReport(tuple(written), tuple(removed), unchanged)


def _folders(root: Path) -> list[str]:
    """Relative names of ``root`` and every folder under it but ``private/``."""
    out = ["."]
    for dirpath, dirnames, _ in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != _PRIVATE]
        out += [(Path(dirpath) / d).relative_to(root).as_posix() for d in dirnames]
    return out
