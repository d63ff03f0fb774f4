"""Download a data set's original files and check them against their published MD5 checksums.

    python -m mpisim.datasets.fetch NAME DIR [--mirror URL] [--timeout SECONDS]

NAME is ``mnist``, ``fashion-mnist`` or ``cifar10``; the files land in DIR
(created if needed), which is then the ``data.root`` to use. ``--mirror URL``
replaces the data set's base URL: the files are fetched as URL/FILENAME
(handy for a local copy, e.g. ``python -m http.server`` in a folder holding
them). ``mnist-small`` and ``synthetic_regression`` need no download.

Each file is downloaded to a temporary file in DIR, its MD5 checked, and
only then renamed into place (atomically), so DIR never holds a partial or
wrong file: a file whose checksum differs is deleted and reported with both
checksums, and the command exits with status 1. Files already in DIR with
the right checksum are not downloaded again. One line is printed per file.

Every download is capped by the size the file can have: its published size,
or, for a file that may arrive re-compressed (below), the largest gzip of
its published content. A server that sends more (an endless stream, a wrong
file) is cut off as soon as it exceeds the cap, and the command exits with
status 1, naming the URL, the bytes received and the cap.

SIGTERM or SIGINT (Ctrl-C) stops the command cleanly: the temporary file
being written is deleted, one line says so, and the exit status is 128 +
the signal's number (143, 130), as for a process the signal killed. A fetch
killed outright (SIGKILL, a crash, a power cut) can leave its temporary
file, ``.FILENAME.XXXXXXXX.part``; the next fetch into DIR deletes those of
the files it fetches and says so. It deletes nothing else, and not the
temporary file of another fetch still writing into DIR (each holds a lock
on its own while it lives).

A DIR that is a file, lies under a file or cannot be written into, and a
``--timeout`` that is not a number of seconds above 0 (at most a day), are
refused with one message naming the argument, exit status 2, before any
download.

A gzipped MNIST file passes if its own MD5 is the published one, or if its
uncompressed content has the published MD5 of LeCun's original file: a
mirror that re-compressed the files (as the copy in the project's
shared/data/mnist is) changes the first but not the second.

For CIFAR-10 the python tarball is downloaded, checked, and only the seven
expected members are extracted, by their known names and only if they are
regular files (nothing else in the archive is ever written, so a crafted
archive cannot write outside DIR), each checked against its own published
MD5, into DIR/cifar-10-batches-py; the tarball is then deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import http.client
import math
import os
import re
import shutil
import signal
import sys
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 20
# The cap of a file whose size nobody wrote down (only a Source made by hand
# has one): far above any file of SOURCES, far below a full disk.
_UNKNOWN_SIZE_CAP = 1 << 30
_MAX_TIMEOUT = 86400.0  # a day: longer per connection or read only hides a dead server
# The temporary files' names: mkstemp puts 8 random characters of [a-z0-9_]
# between the prefix ".NAME." and the suffix ".part".
_PART = r"\.{name}\.[a-z0-9_]{{8}}\.part"


def _gzip_bound(size: int) -> int:
    """The most bytes a gzip of ``size`` bytes can take, whatever its level.

    Stored (uncompressed) deflate blocks cost 5 bytes per 64 KiB, the gzip
    header and trailer 18 plus an optional name; the margin covers both.
    """
    return size + size // 1000 + 1024


@dataclass(frozen=True)
class Remote:
    """One published file: its name, its MD5, and (gzipped files) the MD5 of its uncompressed content.

    ``content_md5`` lets a re-compressed copy of the same bytes pass (a
    mirror that gunzipped and gzipped again changes the archive's MD5 but
    not the data); it is set only where the uncompressed MD5s are published.
    ``size`` and ``content_size`` (bytes) bound what a download may take,
    see ``cap``.
    """

    name: str
    md5: str
    content_md5: str | None = None
    size: int | None = None
    content_size: int | None = None

    def cap(self) -> tuple[int, str]:
        """The most bytes a download of this file may take, and why.

        A file checked by its own MD5 cannot pass with another size, so its
        published size is the cap; one that may pass re-compressed (its
        content's MD5) can be any gzip of the content, hence the bound.
        """
        if self.content_md5 is None and self.size is not None:
            return self.size, "its published size"
        if self.content_md5 is not None and self.content_size is not None:
            return (max(self.size or 0, _gzip_bound(self.content_size)),
                    f"the largest gzip of its published {self.content_size}-byte content")
        return _UNKNOWN_SIZE_CAP, "the cap for a file of unknown size"


@dataclass(frozen=True)
class Source:
    """Where a data set's files come from and how to check them.

    ``files`` are downloaded from ``base_url``; for an archive source,
    ``archive`` is the one file downloaded, and ``members`` are extracted
    from its folder ``folder`` into DIR/``folder``. ``reference`` says where
    the checksums are published.
    """

    base_url: str
    reference: str
    files: tuple[Remote, ...] = ()
    archive: Remote | None = None
    folder: str = ""
    members: tuple[Remote, ...] = ()


SOURCES: dict[str, Source] = {
    # MNIST, from the mirror torchvision downloads from. The archives' MD5s are
    # torchvision's (torchvision/datasets/mnist.py, MNIST.resources); the MD5s
    # of the uncompressed files are the well-known ones of LeCun's original
    # files (listed e.g. by secml's MNIST loader, secml/data/loader/
    # c_dataloader_mnist.py, and in shared/data/README.md of this project,
    # whose re-compressed copies pass through them). The archives' sizes are
    # those on LeCun's page; the uncompressed sizes follow from the IDX
    # format (header, then one byte per pixel or label).
    "mnist": Source(
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        reference="torchvision MNIST.resources; uncompressed: the original files' well-known MD5s",
        files=(
            Remote("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                   "6bbc9ace898e44ae57da46a324031adb", 9912422, 16 + 60000 * 784),
            Remote("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432",
                   "a25bea736e30d166cdddb491f175f624", 28881, 8 + 60000),
            Remote("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3",
                   "2646ac647ad5339dbf082846283269ea", 1648877, 16 + 10000 * 784),
            Remote("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c",
                   "27ae3e4e09519cfbb04c329615203637", 4542, 8 + 10000),
        )),
    # Fashion-MNIST, from its authors' S3 bucket; MD5s as published by the
    # authors in the "Get the Data" table of github.com/zalandoresearch/
    # fashion-mnist README.md (the same in torchvision's FashionMNIST.resources);
    # sizes as the bucket serves them (its Content-Length).
    "fashion-mnist": Source(
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        reference="zalandoresearch/fashion-mnist README, Get the Data",
        files=(
            Remote("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", size=26421880),
            Remote("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", size=29515),
            Remote("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", size=4422102),
            Remote("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", size=5148),
        )),
    # CIFAR-10's python version from Krizhevsky's page; the tarball's and the
    # batches' MD5s are torchvision's (torchvision/datasets/cifar.py: CIFAR10
    # tgz_md5, train_list, test_list, meta); the tarball's size as the page
    # serves it (its Content-Length). The members need no cap: they come out
    # of the verified tarball.
    "cifar10": Source(
        base_url="https://www.cs.toronto.edu/~kriz/",
        reference="torchvision CIFAR10 tgz_md5 / train_list / test_list / meta",
        archive=Remote("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", size=170498071),
        folder="cifar-10-batches-py",
        members=(
            Remote("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            Remote("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            Remote("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            Remote("data_batch_4", "634d18415352ddfa80567beed471001a"),
            Remote("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
            Remote("test_batch", "40351d587109b95175f43aff81a1287e"),
            Remote("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        )),
}

NO_DOWNLOAD = {
    "mnist-small": "is built into the package (mpisim/datasets/mnist-small)",
    "synthetic_regression": "is generated from the run's seed",
}


class FetchError(RuntimeError):
    """A download that failed or a file whose checksum is not the published one."""


class DirectoryError(FetchError):
    """DIR cannot hold the files: it is not a directory, or cannot be written into.

    A FetchError of its own so that the command reports it as the usage
    error it is (exit status 2), before any download.
    """


class Stopped(BaseException):
    """SIGTERM or SIGINT, raised wherever the command is, so the cleanup on the way runs.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception``
    on the way swallows it.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _md5(stream) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def file_md5(path: Path) -> str:
    """The MD5 of a file's bytes, as hex."""
    with open(path, "rb") as stream:
        return _md5(stream)


def _content_md5(path: Path) -> str:
    try:
        with gzip.open(path, "rb") as stream:
            return _md5(stream)
    except (OSError, EOFError, zlib.error) as exc:
        return f"(none: it does not decompress: {exc})"


def verify(path: Path, remote: Remote) -> str:
    """Check ``path`` against ``remote``'s published checksums; say which one matched.

    Returns ``"MD5 <hex>"`` when the file's own MD5 is the published one, or
    ``"uncompressed MD5 <hex>"`` when only its uncompressed content's is;
    raises FetchError naming the file and both checksums (found, published)
    when neither matches.
    """
    got = file_md5(path)
    if got == remote.md5:
        return f"MD5 {got}"
    message = f"{remote.name}: MD5 {got} differs from the published MD5 {remote.md5}"
    if remote.content_md5 is not None:
        content = _content_md5(path)
        if content == remote.content_md5:
            return f"uncompressed MD5 {content}"  # the same data, compressed differently
        message += (f", and its uncompressed content has MD5 {content} instead of the published "
                    f"{remote.content_md5}")
    raise FetchError(message)


def _is_verified(path: Path, remote: Remote) -> bool:
    try:
        return path.is_file() and bool(verify(path, remote))
    except FetchError:
        return False


def _directory(path: str | os.PathLike) -> Path:
    """DIR, created if needed and proven writable, so that a bad DIR is one message before any download."""
    directory = Path(path).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DirectoryError(f"{directory} exists and is not a directory") from None
    except NotADirectoryError:
        blocker = next((p for p in reversed(directory.parents) if p.exists() and not p.is_dir()), None)
        raise DirectoryError(f"{directory} lies under {blocker or 'a file'}, which is not a "
                             f"directory") from None
    except OSError as exc:
        raise DirectoryError(f"{directory} cannot be created ({exc.strerror})") from None
    try:
        # A real write, not os.access: that says yes to root on a read-only mount.
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as exc:
        raise DirectoryError(f"{directory} cannot be written into ({exc.strerror})") from None
    return directory


def _lock(fd: int, path: str) -> bool:
    """Lock a new temporary file; False if a cleaner removed it in the instant before (take another)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        return True  # no locks on this file system: no cleaner can lock it either, so none removes it
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _part(directory: Path, name: str) -> Iterator[tuple[BinaryIO, Path]]:
    """A new temporary file ``.NAME.XXXXXXXX.part`` of ``directory``, open and locked; removed unless renamed.

    The lock (flock, which the kernel drops however the process dies) is
    what tells a later fetch that a partial file is stale, not being
    written by another fetch into the same DIR right now. It is held until
    the file is renamed into place or deleted.
    """
    while True:
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
        except OSError as exc:
            raise FetchError(f"{name}: cannot create a temporary file in {directory}: {exc}") from None
        if _lock(fd, tmp):
            break
        os.close(fd)
    out = os.fdopen(fd, "wb")
    try:
        yield out, Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)  # nothing left to do once renamed into place
        out.close()  # the lock goes last: never an unlocked partial file


def _unlink_if_stale(path: Path) -> int | None:
    """Delete ``path`` if no process holds its lock; its size if deleted, else None."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None  # gone, or not ours to open: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        stat = os.fstat(fd)
        if not os.path.samestat(stat, os.stat(path, follow_symlinks=False)):
            return None
        os.unlink(path)
        return stat.st_size
    except OSError:
        return None  # locked by a fetch at work (or no locks here): keep it
    finally:
        os.close(fd)


def _remove_stale_parts(directory: Path, names: list[str], say: Callable[[str], None]) -> None:
    """Delete the temporary files that a killed fetch left for ``names`` in ``directory``.

    Only this module's own pattern for these very files, only regular files,
    and only those unlocked: a user's files and another running fetch's
    temporary files are never touched.
    """
    pattern = re.compile("|".join(_PART.format(name=re.escape(name)) for name in names))
    try:
        entries = list(os.scandir(directory))
    except OSError:  # e.g. CIFAR's folder, not made yet
        return
    for entry in entries:
        if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            size = _unlink_if_stale(Path(entry.path))
            if size is not None:
                say(f"{entry.path}: removed, a partial download of {size} bytes left by an "
                    f"interrupted fetch")


def _download(url: str, out: BinaryIO, remote: Remote, timeout: float) -> None:
    """``url`` into ``out`` (flushed to disk), cut off as soon as it exceeds ``remote``'s cap.

    The cap is checked against the bytes received, not only the announced
    length: an endless stream announces none.
    """
    cap, why = remote.cap()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.length is not None and response.length > cap:
                raise FetchError(f"{remote.name}: refused {url} after receiving 0 bytes: it announces "
                                 f"{response.length} bytes, more than the cap of {cap} bytes ({why})")
            # Never asks for more than one byte past the cap.
            while chunk := response.read(min(_CHUNK, cap + 1 - received)):
                received += len(chunk)
                if received > cap:
                    raise FetchError(f"{remote.name}: stopped downloading {url} after receiving "
                                     f"{received} bytes, more than the cap of {cap} bytes ({why})")
                out.write(chunk)
        os.fchmod(out.fileno(), 0o644)  # mkstemp makes it private; the data is not secret
        out.flush()
        os.fsync(out.fileno())
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise FetchError(f"{remote.name}: cannot download {url}: {exc}") from None


def _accept(tmp: Path, target: Path, remote: Remote) -> str:
    """Rename ``tmp`` to ``target`` if its checksum is right (say how); else raise (``_part`` deletes it)."""
    try:
        how = verify(tmp, remote)
    except FetchError as exc:
        raise FetchError(f"{exc}; refused, nothing was kept") from None
    os.replace(tmp, target)
    return how


def _url(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def _fetch_files(source: Source, directory: Path, base: str, timeout: float,
                 say: Callable[[str], None]) -> None:
    for remote in source.files:
        target = directory / remote.name
        replacing = ""
        if target.is_file():
            try:
                say(f"{remote.name}: already present, {verify(target, remote)} verified")
                continue
            except FetchError:
                replacing = " (replaced a copy with the wrong checksum)"
        url = _url(base, remote.name)
        with _part(directory, remote.name) as (out, tmp):
            _download(url, out, remote, timeout)
            how = _accept(tmp, target, remote)
        say(f"{remote.name}: downloaded from {url}, {how} verified{replacing}")


def _fetch_archive(source: Source, directory: Path, base: str, timeout: float,
                   say: Callable[[str], None]) -> None:
    folder = directory / source.folder
    if all(_is_verified(folder / m.name, m) for m in source.members):
        for member in source.members:
            say(f"{source.folder}/{member.name}: already present, MD5 {member.md5} verified")
        return
    archive = source.archive
    url = _url(base, archive.name)
    with _part(directory, archive.name) as (out, tmp):  # the tarball is deleted on the way out
        _download(url, out, archive, timeout)
        try:
            how = verify(tmp, archive)
        except FetchError as exc:
            raise FetchError(f"{exc}; refused, nothing was kept") from None
        say(f"{archive.name}: downloaded from {url}, {how} verified")
        try:
            folder.mkdir(exist_ok=True)
            with tarfile.open(tmp, "r:gz") as tar:
                for member in source.members:
                    _extract(tar, source.folder, member, folder, say)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise FetchError(f"{archive.name}: cannot unpack: {exc}") from None


def _extract(tar: tarfile.TarFile, prefix: str, member: Remote, folder: Path,
             say: Callable[[str], None]) -> None:
    # Looked up by its known name and written to a path built from that name:
    # the archive's own paths never decide where anything is written.
    name = f"{prefix}/{member.name}"
    try:
        info = tar.getmember(name)
    except KeyError:
        raise FetchError(f"the archive has no member {name}") from None
    if not info.isfile():
        raise FetchError(f"the archive's {name} is not a regular file; refused")
    with _part(folder, member.name) as (out, tmp):
        shutil.copyfileobj(tar.extractfile(info), out, _CHUNK)
        os.fchmod(out.fileno(), 0o644)
        out.flush()
        os.fsync(out.fileno())
        how = _accept(tmp, folder / member.name, member)
    say(f"{name}: extracted, {how} verified")


def fetch(name: str, directory: str | os.PathLike, *, mirror: str | None = None, timeout: float = 60.0,
          say: Callable[[str], None] = print) -> None:
    """Download data set ``name``'s files into ``directory`` and verify them (see the module docstring).

    Raises FetchError when a download fails, exceeds its cap or a checksum
    differs (nothing wrong is left in ``directory``), DirectoryError (a
    FetchError) when ``directory`` cannot hold the files, ValueError for a
    timeout that is not a number of seconds in (0, a day], KeyError for a
    name without a source.
    """
    if name in NO_DOWNLOAD:
        say(f"{name} {NO_DOWNLOAD[name]}: nothing to download")
        return
    source = SOURCES[name]
    if not 0 < timeout <= _MAX_TIMEOUT:  # also refuses NaN
        raise ValueError(f"timeout must be more than 0 and at most {_MAX_TIMEOUT:g} seconds, not {timeout}")
    directory = _directory(directory)
    _remove_stale_parts(directory, [remote.name for remote in (*source.files, source.archive) if remote],
                        say)
    if source.members:
        _remove_stale_parts(directory / source.folder, [member.name for member in source.members], say)
    base = mirror or source.base_url
    if source.archive is not None:
        _fetch_archive(source, directory, base, timeout, say)
    else:
        _fetch_files(source, directory, base, timeout, say)


def _seconds(text: str) -> float:
    """``--timeout``'s type: a number of seconds above 0, at most a day (not NaN, not infinite)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= _MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds more than 0 and at most {_MAX_TIMEOUT:g} (a day), not {text!r}")
    return value


@contextlib.contextmanager
def _signals_stop() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise Stopped (so partial files are deleted) instead of killing.

    Only from the main thread (the only one that may set handlers); a
    signal the process was started ignoring (SIGINT of a background job)
    stays ignored. The previous handlers come back afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped(signum)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status.

    0 done, 1 a download or a checksum failed, 2 a usage error (argparse's
    convention, also for a DIR that cannot hold the files), 128 + the
    signal's number when stopped by SIGTERM or SIGINT.
    """
    parser = argparse.ArgumentParser(
        prog="python -m mpisim.datasets.fetch",
        description="Download a data set's original files into DIR and verify their published MD5s.")
    parser.add_argument("name", metavar="NAME", choices=sorted([*SOURCES, *NO_DOWNLOAD]),
                        help="data set: " + ", ".join(sorted([*SOURCES, *NO_DOWNLOAD])))
    parser.add_argument("directory", metavar="DIR", nargs="?",
                        help="where the files go (the data.root to use); not needed for sets "
                             "without a download")
    parser.add_argument("--mirror", metavar="URL", help="base URL to fetch URL/FILENAME from instead")
    parser.add_argument("--timeout", type=_seconds, default=60.0, metavar="SECONDS",
                        help="network timeout per connection and read, more than 0 and at most "
                             "a day (default 60)")
    args = parser.parse_args(argv)
    if args.directory is None and args.name not in NO_DOWNLOAD:
        parser.error(f"{args.name} needs DIR, the directory to download into")
    try:
        with _signals_stop():
            fetch(args.name, args.directory, mirror=args.mirror, timeout=args.timeout,
                  say=lambda line: print(line, flush=True))
    except DirectoryError as exc:
        parser.error(f"argument DIR: {exc}")
    except FetchError as exc:
        print(f"mpisim.datasets.fetch: error: {exc}", file=sys.stderr)
        return 1
    except Stopped as stopped:
        print(f"mpisim.datasets.fetch: stopped by {signal.Signals(stopped.signum).name}; the files "
              f"verified so far are kept, no partial download is left", file=sys.stderr)
        return 128 + stopped.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
