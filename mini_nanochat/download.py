"""
Robust file downloads for remote corpora (hundreds of ~100 MB parquet shards over a flaky network).

What can go wrong, and what `download_file` does about it:

  connection drops mid-file     the bytes so far stay in `<file>.partial`; the next attempt asks for the
                                rest with an HTTP Range request (and starts over if the server ignores it)
  HTTP 5xx / 429 / timeouts     retried with exponential backoff (1 s, 2 s, 4 s, ...)
  HTTP 403 / 404                not retried: the host refuses, and the error says which URL
  offline (DNS fails)           not retried: a clear message that suggests the offline corpus
  corrupt file                  `verify` (size, parquet footer) rejects it; it is deleted and fetched again
  two processes, same shard     an exclusive file lock (`<file>.lock`): the second waits, then finds the
                                file complete and returns, so torchrun ranks never fetch one shard twice
  crash while writing           data goes to `.partial` and is renamed only once verified (atomic)

Standard library only (urllib, fcntl): nothing to install, and every line is readable.
"""
from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

USER_AGENT = "mini-nanochat/0.1 (+https://github.com/karpathy/nanochat spirit)"


class DownloadError(Exception):
    """A download failed for good (refused, offline, or out of retries). The message says why and what to do."""


class _Retryable(Exception):
    pass


@contextlib.contextmanager
def file_lock(path: Path, timeout: float | None = None):
    """An exclusive advisory lock on `path` (created if needed), shared by threads and processes (POSIX flock)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if timeout is not None and time.monotonic() - start > timeout:
                    raise DownloadError(f"timed out after {timeout:.0f}s waiting for the lock {path}") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def verify_parquet(path: Path, expected_size: int | None = None) -> bool:
    """True if `path` has the expected size (when known) and a readable parquet footer."""
    import pyarrow.parquet as pq

    try:
        if expected_size is not None and path.stat().st_size != expected_size:
            return False
        pq.ParquetFile(path).metadata  # reads the footer: magic bytes, schema, row groups
        return True
    except Exception:  # noqa: BLE001 - any failure to parse means "corrupt"
        return False


def _fetch_to_partial(url: str, part: Path, timeout: float, on_bytes: Callable[[int], None] | None) -> None:
    """One attempt: fetch `url` into `part`, resuming from its current size. Raises _Retryable or
    DownloadError; returns when the server's announced length has been received."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # "range not satisfiable": we already hold every byte; verify decides
            return
        if e.code in (408, 425, 429) or e.code >= 500:
            raise _Retryable(f"HTTP {e.code} {e.reason}") from e
        raise DownloadError(f"the server refused {url}: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, socket.gaierror):
            host = urllib.parse.urlsplit(url).hostname
            raise DownloadError(f"cannot resolve {host!r} ({e.reason}): are you offline? The embedded corpus "
                                f"needs no network: python -m mini_nanochat data --corpus embedded") from e
        raise _Retryable(f"cannot connect: {e.reason}") from e
    except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
        raise _Retryable(f"{type(e).__name__}: {e}") from e

    with response:
        if response.status == 206:
            mode, start = "ab", have
        else:  # 200: the server sent the whole file (it ignored or we did not send a Range)
            mode, start = "wb", 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        received = start
        try:
            with open(part, mode) as f:
                while True:
                    block = response.read(1 << 20)
                    if not block:
                        break
                    f.write(block)
                    received += len(block)
                    if on_bytes:
                        on_bytes(len(block))
        except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
            raise _Retryable(f"connection lost after {received:,} bytes: {type(e).__name__}: {e}") from e
        if total is not None and received < total:
            raise _Retryable(f"connection closed after {received:,} of {total:,} bytes")


def download_file(url: str, dest: str | os.PathLike, *, verify: Callable[[Path], bool] | None = None,
                  retries: int = 5, backoff: float = 1.0, timeout: float = 60.0,
                  on_bytes: Callable[[int], None] | None = None, lock_timeout: float | None = None) -> Path:
    """Download `url` to `dest` robustly (see the module docstring). Returns `dest`.

    `verify(path) -> bool` checks a finished file (e.g. `verify_parquet`); an existing `dest` that passes
    it is not downloaded again. Raises DownloadError with a readable message when it gives up.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".partial")
    with file_lock(dest.with_name(dest.name + ".lock"), timeout=lock_timeout):
        if dest.exists():
            if verify is None or verify(dest):
                return dest
            dest.unlink()  # present but corrupt: fetch again
        last: Exception | None = None
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                _fetch_to_partial(url, part, timeout, on_bytes)
            except _Retryable as e:
                last = e
                continue
            if verify is not None and not verify(part):
                last = _Retryable("the downloaded file failed verification (corrupt)")
                part.unlink(missing_ok=True)  # do not resume from corrupt bytes
                continue
            os.replace(part, dest)
            return dest
        raise DownloadError(f"giving up on {url} after {retries + 1} attempts; last error: {last}")


def download_many(jobs: list[tuple[str, Path]], *, workers: int = 4, verify: Callable[[Path], bool] | None = None,
                  desc: str = "download", **kwargs) -> list[Path]:
    """Download several (url, dest) pairs in parallel threads with one byte-level progress bar.
    All are attempted; if any fails, a DownloadError listing every failure is raised at the end."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="B", unit_scale=True, unit_divisor=1024)
    lock = threading.Lock()

    def on_bytes(n: int) -> None:
        with lock:
            bar.update(n)

    def one(job):
        url, dest = job
        try:
            return download_file(url, dest, verify=verify, on_bytes=on_bytes, **kwargs)
        except DownloadError as e:
            return e

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, jobs))
    bar.close()
    errors = [r for r in results if isinstance(r, DownloadError)]
    if errors:
        counts: dict[str, int] = {}
        for e in errors:  # the same cause (e.g. offline) for every shard is said once
            counts[str(e)] = counts.get(str(e), 0) + 1
        lines = [f"  {msg}" + (f" (x{n})" if n > 1 else "") for msg, n in counts.items()]
        raise DownloadError(f"{len(errors)} of {len(jobs)} downloads failed:\n" + "\n".join(lines))
    return results
