"""The download command, against a local HTTP server on 127.0.0.1 (no other network)."""

import functools
import gzip
import hashlib
import io
import pickle
import socket
import subprocess
import sys
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from mpisim import datasets as data
from mpisim.datasets import fetch

# Each test talks to a server thread: never let one hang the suite.
pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]
MNIST_FILES = [remote.name for remote in fetch.SOURCES["mnist"].files]


class Server:
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

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                         functools.partial(Handler, directory=str(directory)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


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
