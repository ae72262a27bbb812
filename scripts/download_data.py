"""Download a data set of the paper's experiments: ``python scripts/download_data.py wikitext2|cifar10 --dir DIR``.

The files land directly in ``DIR``: ``wiki.{train,valid,test}.tokens`` for WikiText-2 (use
``--dir data/wikitext-2``, the configs' ``task.data_dir``), ``data_batch_1..5`` and
``test_batch`` for CIFAR-10 (``--dir data/cifar-10-batches-py``). The archive comes from the
data set's public location and is checked against its MD5 before anything is unpacked; a failed
download or check leaves nothing behind. ``--url`` (or ``GOSSIP_DATA_URL``, a base URL) points
at a mirror.

The MD5 sums are those that torchvision (CIFAR-10) and torchtext (WikiText-2) publish for the
same archives; this project could not re-check them from its offline build machine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm


@dataclass(frozen=True)
class DataSet:
    url: str
    md5: str
    inner: str  # the archive's folder that holds the files
    files: tuple[str, ...]


DATA_SETS = {
    "wikitext2": DataSet("https://wikitext.smerity.com/wikitext-2-v1.zip", "542ccefacc6c27f945fb54453812b3cd",
                         "wikitext-2", ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")),
    "cifar10": DataSet("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                       "cifar-10-batches-py", tuple(f"data_batch_{k}" for k in range(1, 6)) + ("test_batch",)),
}


def fetch(url: str, target: Path) -> None:
    """Stream ``url`` into ``target`` with a progress bar."""
    with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name) as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack(archive: Path, into: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            z.extractall(into)
    else:
        with tarfile.open(archive) as t:
            t.extractall(into, filter="data")


def download(name: str, directory: Path, url: str | None = None, md5: str | None = None) -> list[Path]:
    """Fetch, verify and unpack data set ``name`` into ``directory``; returns the files written."""
    spec = DATA_SETS[name]
    base = os.environ.get("GOSSIP_DATA_URL")
    url = url or (f"{base.rstrip('/')}/{Path(spec.url).name}" if base else spec.url)
    with tempfile.TemporaryDirectory(prefix="gossip-download-") as scratch:
        archive = Path(scratch) / Path(url).name
        fetch(url, archive)
        actual = md5_of(archive)
        if actual != (md5 or spec.md5):
            raise ValueError(f"{url}: MD5 {actual} does not match the expected {md5 or spec.md5}")
        unpack(archive, Path(scratch) / "unpacked")
        source = Path(scratch) / "unpacked" / spec.inner
        missing = [f for f in spec.files if not (source / f).is_file()]
        if missing:
            raise ValueError(f"{url}: the archive lacks {spec.inner}/{missing[0]}")
        directory.mkdir(parents=True, exist_ok=True)
        for f in spec.files:
            shutil.move(str(source / f), directory / f)
    return [directory / f for f in spec.files]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(DATA_SETS))
    parser.add_argument("--dir", type=Path, required=True, help="where the data set's files go")
    parser.add_argument("--url", help="download from this address instead")
    parser.add_argument("--md5", help="expected MD5 of the archive (default: the published one)")
    args = parser.parse_args(argv)
    try:
        files = download(args.name, args.dir, args.url, args.md5)
    except (OSError, urllib.error.URLError, ValueError, tarfile.TarError, zipfile.BadZipFile) as exc:
        print(f"error: {args.name}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(f"{args.name}: {len(files)} files in {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
