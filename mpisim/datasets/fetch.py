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
import gzip
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """One published file: its name, its MD5, and (gzipped files) the MD5 of its uncompressed content.

    ``content_md5`` lets a re-compressed copy of the same bytes pass (a
    mirror that gunzipped and gzipped again changes the archive's MD5 but
    not the data); it is set only where the uncompressed MD5s are published.
    """

    name: str
    md5: str
    content_md5: str | None = None


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
    # whose re-compressed copies pass through them).
    "mnist": Source(
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        reference="torchvision MNIST.resources; uncompressed: the original files' well-known MD5s",
        files=(
            Remote("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                   "6bbc9ace898e44ae57da46a324031adb"),
            Remote("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432",
                   "a25bea736e30d166cdddb491f175f624"),
            Remote("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3",
                   "2646ac647ad5339dbf082846283269ea"),
            Remote("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c",
                   "27ae3e4e09519cfbb04c329615203637"),
        )),
    # Fashion-MNIST, from its authors' S3 bucket; MD5s as published by the
    # authors in the "Get the Data" table of github.com/zalandoresearch/
    # fashion-mnist README.md (the same in torchvision's FashionMNIST.resources).
    "fashion-mnist": Source(
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        reference="zalandoresearch/fashion-mnist README, Get the Data",
        files=(
            Remote("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            Remote("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            Remote("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            Remote("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        )),
    # CIFAR-10's python version from Krizhevsky's page; the tarball's and the
    # batches' MD5s are torchvision's (torchvision/datasets/cifar.py: CIFAR10
    # tgz_md5, train_list, test_list, meta).
    "cifar10": Source(
        base_url="https://www.cs.toronto.edu/~kriz/",
        reference="torchvision CIFAR10 tgz_md5 / train_list / test_list / meta",
        archive=Remote("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
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


def _download(url: str, directory: Path, name: str, timeout: float) -> Path:
    """``url`` into a new temporary file of ``directory`` (flushed to disk); removed on failure."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the data is not secret
    except BaseException as exc:
        os.unlink(tmp)
        if isinstance(exc, (urllib.error.URLError, http.client.HTTPException, OSError)):
            raise FetchError(f"{name}: cannot download {url}: {exc}") from None
        raise
    return Path(tmp)


def _accept(tmp: Path, target: Path, remote: Remote) -> str:
    """Rename ``tmp`` onto ``target`` if its checksum is right (say which); else delete it and raise."""
    try:
        how = verify(tmp, remote)
    except FetchError as exc:
        tmp.unlink()
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
        how = _accept(_download(url, directory, remote.name, timeout), target, remote)
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
    tmp = _download(url, directory, archive.name, timeout)
    try:
        try:
            how = verify(tmp, archive)
        except FetchError as exc:
            raise FetchError(f"{exc}; refused, nothing was kept") from None
        say(f"{archive.name}: downloaded from {url}, {how} verified")
        folder.mkdir(exist_ok=True)
        with tarfile.open(tmp, "r:gz") as tar:
            for member in source.members:
                _extract(tar, source.folder, member, folder, say)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise FetchError(f"{archive.name}: cannot unpack: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


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
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{member.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(tar.extractfile(info), out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
    except BaseException:
        os.unlink(tmp)
        raise
    how = _accept(Path(tmp), folder / member.name, member)
    say(f"{name}: extracted, {how} verified")


def fetch(name: str, directory: str | os.PathLike, *, mirror: str | None = None, timeout: float = 60.0,
          say: Callable[[str], None] = print) -> None:
    """Download data set ``name``'s files into ``directory`` and verify them (see the module docstring).

    Raises FetchError when a download fails or a checksum differs (nothing
    wrong is left in ``directory``), KeyError for a name without a source.
    """
    if name in NO_DOWNLOAD:
        say(f"{name} {NO_DOWNLOAD[name]}: nothing to download")
        return
    source = SOURCES[name]
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    base = mirror or source.base_url
    if source.archive is not None:
        _fetch_archive(source, directory, base, timeout, say)
    else:
        _fetch_files(source, directory, base, timeout, say)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 done, 1 failed)."""
    parser = argparse.ArgumentParser(
        prog="python -m mpisim.datasets.fetch",
        description="Download a data set's original files into DIR and verify their published MD5s.")
    parser.add_argument("name", metavar="NAME", choices=sorted([*SOURCES, *NO_DOWNLOAD]),
                        help="data set: " + ", ".join(sorted([*SOURCES, *NO_DOWNLOAD])))
    parser.add_argument("directory", metavar="DIR", nargs="?",
                        help="where the files go (the data.root to use); not needed for sets "
                             "without a download")
    parser.add_argument("--mirror", metavar="URL", help="base URL to fetch URL/FILENAME from instead")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="network timeout per connection and read (default 60)")
    args = parser.parse_args(argv)
    if args.directory is None and args.name not in NO_DOWNLOAD:
        parser.error(f"{args.name} needs DIR, the directory to download into")
    try:
        fetch(args.name, args.directory, mirror=args.mirror, timeout=args.timeout,
              say=lambda line: print(line, flush=True))
    except FetchError as exc:
        print(f"mpisim.datasets.fetch: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
