"""scripts/download_data.py against a local HTTP server serving small archives made here."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
import zipfile

import pytest

from conftest import ROOT

WIKI = ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")
CIFAR = tuple(f"data_batch_{k}" for k in range(1, 6)) + ("test_batch",)


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path/www`` on a free local port; yields the base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def make_zip(path, folder, names) -> str:
    with zipfile.ZipFile(path, "w") as z:
        for name in names:
            z.writestr(f"{folder}/{name}", f"contents of {name}\n")
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_tar(path, folder, names) -> str:
    with tarfile.open(path, "w:gz") as t:
        for name in names:
            data = f"contents of {name}".encode()
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def download(*args, base: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **({"GOSSIP_DATA_URL": base} if base else {}))
    return subprocess.run([sys.executable, str(ROOT / "scripts/download_data.py"), *args], capture_output=True,
                          text=True, timeout=60, env=env)


def test_wikitext2_and_cifar10_are_fetched_verified_and_unpacked(server, tmp_path):
    www, base = server
    wiki_md5 = make_zip(www / "wikitext-2-v1.zip", "wikitext-2", WIKI)
    cifar_md5 = make_tar(www / "cifar-10-python.tar.gz", "cifar-10-batches-py", CIFAR)
    result = download("wikitext2", "--dir", str(tmp_path / "wt2"), "--md5", wiki_md5, base=base)
    assert result.returncode == 0, result.stderr
    assert [(tmp_path / "wt2" / f).read_text() for f in WIKI] == [f"contents of {f}\n" for f in WIKI]
    result = download("cifar10", "--dir", str(tmp_path / "c10"), "--url", f"{base}/cifar-10-python.tar.gz",
                      "--md5", cifar_md5)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "c10").iterdir()) == sorted(CIFAR)


def test_a_wrong_checksum_or_a_missing_file_leaves_nothing_behind(server, tmp_path):
    www, base = server
    make_zip(www / "wikitext-2-v1.zip", "wikitext-2", WIKI)
    result = download("wikitext2", "--dir", str(tmp_path / "wt2"), "--md5", "0" * 32, base=base)
    assert result.returncode == 1 and "does not match the expected" in result.stderr
    assert not (tmp_path / "wt2").exists() and "Traceback" not in result.stderr
    result = download("cifar10", "--dir", str(tmp_path / "c10"), "--url", f"{base}/absent.tar.gz")
    assert result.returncode == 1 and result.stderr.startswith("error: cifar10:") and not (tmp_path / "c10").exists()
