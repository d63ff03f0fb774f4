"""The download command, against a local HTTP server on 127.0.0.1 (no other network)."""

import fcntl
import functools
import gzip
import hashlib
import io
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from mpisim import datasets as data
from mpisim.datasets import fetch

# Each test talks to a server thread: never let one hang the suite.
pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
MNIST_FILES = [remote.name for remote in fetch.SOURCES["mnist"].files]


class _Threaded:
    """An HTTP server on 127.0.0.1 in a thread of the test (``serve`` starts it, ``close`` stops it)."""

    def serve(self, handler):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


class Server(_Threaded):
    """A static file server for ``directory`` in a thread; records the paths asked for."""

    def __init__(self, directory):
        self.requests = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

        self.serve(functools.partial(Handler, directory=str(directory)))


@pytest.fixture
def serve():
    servers = []

    def start(directory):
        servers.append(Server(directory))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def leftovers(directory):
    return sorted(p.name for p in Path(directory).rglob(".*.part"))


def test_mnist_arrives_verified_and_is_not_downloaded_twice(mnist_dir, serve, tmp_path, capsys):
    server = serve(mnist_dir)
    out = tmp_path / "mnist"

    assert fetch.main(["mnist", str(out), "--mirror", server.url, "--timeout", "30"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("verified" in line for line in lines)
    for name in MNIST_FILES:
        assert (out / name).read_bytes() == (mnist_dir / name).read_bytes()
    assert sorted(server.requests) == sorted(f"/{name}" for name in MNIST_FILES)
    assert leftovers(out) == []
    assert data.num_samples("mnist", out, "train") == 60000

    assert fetch.main(["mnist", str(out), "--mirror", server.url + "/"]) == 0

    again = capsys.readouterr().out.splitlines()
    assert len(again) == 4 and all("already present" in line for line in again)
    assert len(server.requests) == 4


def test_the_command_runs_as_a_module(mnist_dir, serve, tmp_path):
    server = serve(mnist_dir)
    out = tmp_path / "via-subprocess"

    result = subprocess.run(
        [sys.executable, "-m", "mpisim.datasets.fetch", "mnist", str(out), "--mirror", server.url],
        cwd=ROOT, capture_output=True, text=True, timeout=180)

    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 4
    assert sorted(p.name for p in out.iterdir()) == sorted(MNIST_FILES)


def test_a_corrupted_file_is_refused_and_deleted(mnist_dir, serve, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (mirror / name).symlink_to(mnist_dir / name)
    # A well-formed gzip of labels with one label changed.
    labels = bytearray(gzip.decompress((mnist_dir / "train-labels-idx1-ubyte.gz").read_bytes()))
    labels[100] = (labels[100] + 1) % 10
    bad = mirror / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(bytes(labels), mtime=0))
    bad_md5, bad_content_md5 = md5(bad), hashlib.md5(bytes(labels)).hexdigest()
    server = serve(mirror)
    out = tmp_path / "out"

    result = subprocess.run(
        [sys.executable, "-m", "mpisim.datasets.fetch", "mnist", str(out), "--mirror", server.url],
        cwd=ROOT, capture_output=True, text=True, timeout=180)

    assert result.returncode == 1
    message = result.stderr
    assert "train-labels-idx1-ubyte.gz" in message
    assert bad_md5 in message and "d53e105ee54ea40749a09fcbcd1e9432" in message
    assert bad_content_md5 in message and "a25bea736e30d166cdddb491f175f624" in message
    assert not (out / "train-labels-idx1-ubyte.gz").exists() and leftovers(out) == []
    # The file before it was right and stays; nothing after it was fetched.
    assert md5(out / "train-images-idx3-ubyte.gz") == md5(mnist_dir / "train-images-idx3-ubyte.gz")
    assert sorted(p.name for p in out.iterdir()) == ["train-images-idx3-ubyte.gz"]


def test_a_file_with_the_published_md5_passes_and_one_without_is_named(tmp_path, serve, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    payload = b"not really fashion"
    (mirror / "a.gz").write_bytes(payload)
    (mirror / "b.gz").write_bytes(b"something else")
    source = fetch.Source(base_url="http://127.0.0.1:9/", reference="test",
                          files=(fetch.Remote("a.gz", hashlib.md5(payload).hexdigest()),
                                 fetch.Remote("b.gz", "0" * 32)))
    monkeypatch.setitem(fetch.SOURCES, "fashion-mnist", source)
    server = serve(mirror)
    out = tmp_path / "out"

    with pytest.raises(fetch.FetchError) as info:
        fetch.fetch("fashion-mnist", out, mirror=server.url, say=lambda line: None)

    assert "b.gz" in str(info.value) and "0" * 32 in str(info.value)
    assert hashlib.md5(b"something else").hexdigest() in str(info.value)
    assert (out / "a.gz").read_bytes() == payload
    assert sorted(p.name for p in out.iterdir()) == ["a.gz"]


def _cifar_tarball(path, batches, extra=()):
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in [*batches.items(), *extra]:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        link = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)


def test_cifar_extracts_only_the_expected_members_and_loads(tmp_path, serve, monkeypatch):
    rng = np.random.default_rng(0)
    blobs = {}
    for name in (*[f"data_batch_{i}" for i in range(1, 6)], "test_batch"):
        entry = {b"batch_label": b"x", b"labels": [int(v) for v in rng.integers(0, 10, 2)],
                 b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
                 b"filenames": [b"a.png", b"b.png"]}
        blobs[name] = pickle.dumps(entry, protocol=2)
    blobs["batches.meta"] = pickle.dumps({b"label_names": [b"airplane"]}, protocol=2)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    tarball = mirror / "cifar-10-python.tar.gz"
    _cifar_tarball(tarball, {f"cifar-10-batches-py/{k}": v for k, v in blobs.items()},
                   extra=[("cifar-10-batches-py/../../escaped", b"evil"), ("/tmp/absolute", b"evil")])
    source = fetch.SOURCES["cifar10"]
    monkeypatch.setitem(fetch.SOURCES, "cifar10", fetch.Source(
        base_url=source.base_url, reference="test", folder=source.folder,
        archive=fetch.Remote(tarball.name, md5(tarball)),
        members=tuple(fetch.Remote(m.name, hashlib.md5(blobs[m.name]).hexdigest()) for m in source.members)))
    server = serve(mirror)
    out = tmp_path / "deep" / "out"

    assert fetch.main(["cifar10", str(out), "--mirror", server.url]) == 0

    assert sorted(p.name for p in out.iterdir()) == ["cifar-10-batches-py"]
    assert sorted(p.name for p in (out / "cifar-10-batches-py").iterdir()) == sorted(blobs)
    assert not (tmp_path / "escaped").exists() and not (out.parent / "escaped").exists()
    assert data.load("cifar10", out, "train").inputs.shape == (10, 3, 32, 32)
    assert fetch.main(["cifar10", str(out), "--mirror", server.url]) == 0
    assert server.requests == ["/cifar-10-python.tar.gz"]  # present and verified: not fetched again


def test_a_cifar_tarball_with_the_wrong_checksum_leaves_nothing(tmp_path, serve, capsys):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "cifar-10-python.tar.gz").write_bytes(b"truncated")
    server = serve(mirror)
    out = tmp_path / "out"

    assert fetch.main(["cifar10", str(out), "--mirror", server.url]) == 1

    err = capsys.readouterr().err
    assert "cifar-10-python.tar.gz" in err and "c58f30108f718f92721af3b95e74349a" in err
    assert hashlib.md5(b"truncated").hexdigest() in err
    assert list(out.iterdir()) == []


def test_sets_without_download_say_so(capsys):
    assert fetch.main(["synthetic_regression"]) == 0
    assert fetch.main(["mnist-small", "anywhere"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("nothing to download" in line for line in lines)


def test_an_unreachable_mirror_fails_cleanly(tmp_path, capsys):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"

    assert fetch.main(["mnist", str(out), "--mirror", f"http://127.0.0.1:{port}", "--timeout", "5"]) == 1

    assert "cannot download" in capsys.readouterr().err
    assert list(out.iterdir()) == []


class Stream(_Threaded):
    """A server thread that answers every GET with ``limit`` bytes of zeros, no length announced.

    Sent in 64 KiB pieces ``pause`` seconds apart: with a large ``limit``, an
    endless stream to the client (the limit only keeps a broken client from
    filling the disk). ``sent`` counts the bytes written.
    """

    def __init__(self, limit, pause=0.0):
        self.sent = 0
        stream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()  # HTTP/1.0, no Content-Length: the body ends when the server closes
                piece = bytes(1 << 16)
                try:
                    while stream.sent < limit:
                        self.wfile.write(piece)
                        stream.sent += len(piece)
                        time.sleep(pause)
                except OSError:  # the client hung up
                    pass

        self.serve(Handler)


@pytest.fixture
def stream():
    servers = []

    def start(limit, pause=0.0):
        servers.append(Stream(limit, pause))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _wait_for_part(directory, process, at_least=1 << 16, within=120):
    """The .part file of ``directory`` once it holds ``at_least`` bytes: the download is under way."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        parts = [p for p in Path(directory).glob(".*.part") if p.stat().st_size >= at_least]
        if parts:
            return parts[0]
        if process.poll() is not None:
            pytest.fail(f"the fetch ended before its download was under way: {process.communicate()}")
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"no download under way in {directory} after {within} s")


@pytest.mark.parametrize("case", ["a file", "under a file"])
def test_a_dir_that_is_not_a_directory_is_a_usage_error(case, tmp_path, serve, capsys):
    server = serve(tmp_path)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    out = blocker if case == "a file" else blocker / "data" / "mnist"

    with pytest.raises(SystemExit) as info:
        fetch.main(["mnist", str(out), "--mirror", server.url])

    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument DIR" in err and "not a directory" in err and str(blocker) in err
    assert "Traceback" not in err and server.requests == []
    assert blocker.read_text() == "mine"


def _main_in_a_child(argv, *, drop_root):
    """Run ``fetch.main(argv)`` in a forked child (as nobody if ``drop_root``); its exit code and stderr."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.close(read)
            sys.stderr = open(write, "w")
            if drop_root:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            try:
                code = fetch.main(argv)
            except SystemExit as exc:
                code = exc.code
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 99)
    os.close(write)
    with open(read) as stream:
        err = stream.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), err


def test_a_read_only_dir_is_a_usage_error():
    # Root writes into a directory of mode 555 all the same: the command then runs as nobody
    # (in a forked child, which needs nothing more from disk, wherever Python is installed).
    with tempfile.TemporaryDirectory() as scratch:
        os.chmod(scratch, 0o755)
        read_only = Path(scratch) / "read-only"
        read_only.mkdir()
        read_only.chmod(0o555)
        try:
            code, err = _main_in_a_child(["mnist", str(read_only), "--mirror", "http://127.0.0.1:9"],
                                         drop_root=os.geteuid() == 0)
        finally:
            read_only.chmod(0o755)
        assert list(read_only.iterdir()) == []

    assert code == 2, err
    assert "argument DIR" in err and str(read_only) in err
    assert "cannot be written into" in err and "Traceback" not in err


@pytest.mark.parametrize("timeout", ["nan", "-1", "0", "inf"])
def test_a_timeout_that_is_not_a_positive_number_of_seconds_is_a_usage_error(timeout, tmp_path, serve,
                                                                             capsys):
    server = serve(tmp_path)
    out = tmp_path / "out"

    with pytest.raises(SystemExit) as info:
        fetch.main(["mnist", str(out), "--mirror", server.url, "--timeout", timeout])

    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --timeout" in err and "more than 0" in err and repr(timeout) in err
    assert not out.exists() and server.requests == []


@pytest.mark.parametrize("how", ["endless", "announced"])
def test_a_download_is_cut_off_at_the_size_the_file_can_have(how, tmp_path, serve, stream, capsys,
                                                             monkeypatch):
    # Fashion-MNIST's test labels, as the table knows them: 5148 bytes, checked by their own MD5.
    labels = fetch.SOURCES["fashion-mnist"].files[3]
    monkeypatch.setitem(fetch.SOURCES, "fashion-mnist",
                        fetch.Source(base_url="http://127.0.0.1:9/", reference="test", files=(labels,)))
    if how == "endless":
        server = stream(limit=32 << 20)
    else:  # a file too long, whose length the server announces
        mirror = tmp_path / "mirror"
        mirror.mkdir()
        (mirror / labels.name).write_bytes(bytes(10000))
        server = serve(mirror)
    out = tmp_path / "out"

    assert fetch.main(["fashion-mnist", str(out), "--mirror", server.url]) == 1

    err = capsys.readouterr().err
    assert f"{server.url}/{labels.name}" in err and "the cap of 5148 bytes" in err
    received = int(re.search(r"after receiving (\d+) bytes", err).group(1))
    if how == "endless":
        assert 5148 < received <= 5148 + 1 and server.sent < 32 << 20
    else:
        assert received == 0 and "announces 10000 bytes" in err
    assert list(out.iterdir()) == []


def test_every_known_file_has_a_cap_that_its_copies_pass(mnist_dir):
    for source in fetch.SOURCES.values():
        for remote in (*source.files, source.archive):
            if remote is not None:
                cap, why = remote.cap()
                assert cap >= (remote.size or 0) and "unknown" not in why, remote.name
    # The project's re-compressed MNIST copies differ in size from the published files (one is larger).
    for remote in fetch.SOURCES["mnist"].files:
        assert (mnist_dir / remote.name).stat().st_size <= remote.cap()[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_download_removes_the_partial_file_and_exits_128_plus_its_number(signum, tmp_path,
                                                                                      stream):
    server = stream(limit=32 << 20, pause=0.01)  # about 6 MB/s: under way for seconds
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "mpisim.datasets.fetch", "mnist", str(out), "--mirror", server.url],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_part(out, process)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait(timeout=60)

    assert process.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert err.splitlines() == [f"mpisim.datasets.fetch: stopped by {name}; the files verified so far "
                                f"are kept, no partial download is left"]
    assert leftovers(out) == []


def test_a_later_fetch_removes_the_partial_files_a_killed_one_left_and_nothing_else(mnist_dir, serve,
                                                                                    stream, tmp_path,
                                                                                    capsys):
    out = tmp_path / "out"
    slow = stream(limit=32 << 20, pause=0.01)
    process = subprocess.Popen(
        [sys.executable, "-m", "mpisim.datasets.fetch", "mnist", str(out), "--mirror", slow.url],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        killed = _wait_for_part(out, process)
    finally:
        process.kill()  # SIGKILL: nothing of the process cleans up
        process.wait(timeout=60)
    assert killed.exists() and killed.name.startswith(".train-images-idx3-ubyte.gz.")
    # Another stale one, of a file the fetch writes, in mkstemp's pattern.
    (out / ".t10k-labels-idx1-ubyte.gz.x7_k2m9q.part").write_bytes(b"partial")
    # Neither the user's files nor what another fetch is writing right now (it holds the lock).
    kept = [".train-images-idx3-ubyte.gz.mine.part", ".train-images-idx3-ubyte.gz.abcdefgh.part.bak",
            ".other-file.gz.abcdefgh.part", "train-labels-idx1-ubyte.gz.abcdefgh.part", "notes.part"]
    for name in kept:
        (out / name).write_text("mine")
    (out / ".t10k-images-idx3-ubyte.gz.link0000.part").symlink_to(out / "notes.part")
    in_use = out / ".train-labels-idx1-ubyte.gz.abcd1234.part"
    in_use.write_bytes(b"being written")
    server = serve(mnist_dir)

    with open(in_use, "rb+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert fetch.main(["mnist", str(out), "--mirror", server.url]) == 0

    lines = capsys.readouterr().out.splitlines()
    removed = [line for line in lines if "removed" in line]
    assert len(removed) == 2 and any(killed.name in line for line in removed)
    assert sum("verified" in line for line in lines) == 4
    assert sorted(leftovers(out)) == sorted([in_use.name, ".train-images-idx3-ubyte.gz.mine.part",
                                             ".other-file.gz.abcdefgh.part",
                                             ".t10k-images-idx3-ubyte.gz.link0000.part"])
    assert all((out / name).read_text() == "mine" for name in kept)
    assert (out / ".t10k-images-idx3-ubyte.gz.link0000.part").is_symlink()
    assert in_use.read_bytes() == b"being written"
