"""
Robust file downloads for remote corpora (hundreds of ~100 MB parquet shards over a flaky network).

What can go wrong, and what `download_file` does about it:

  connection drops mid-file     the bytes so far stay in `<file>.partial`; the next attempt asks for the
                                rest with an HTTP Range request (and starts over if the server ignores it)
  server lies about the range   a 206 reply must carry the Content-Range asked for; any other range, or
                                a 200 (the whole file), never gets appended to the partial file
  a partial of another file     `<file>.partial.json` records the URL, size and ETag the partial bytes
                                came from; if the server now describes another file, they are discarded
  HTTP 5xx / 429 / timeouts     retried with exponential backoff (1 s, 2 s, 4 s, ...)
  a server that trickles        `timeout` bounds each read, `deadline` the whole file, retries included
  HTTP 403 / 404                not retried: the host refuses, and the error says which URL
  offline (DNS fails)           not retried: a clear message that suggests the offline corpus
  corrupt file                  checked against the size and sha256 the source publishes (Hugging Face:
                                X-Linked-Size / X-Linked-Etag on its redirect) or the caller expects, and
                                by `verify` (parquet footer); a bad file is deleted and fetched again
  two processes, same shard     an exclusive file lock (`<file>.lock`): the second waits, then finds the
                                file complete and returns, so torchrun ranks never fetch one shard twice
  crash while writing           data goes to `.partial` and is renamed only once verified (atomic)

Standard library only (urllib, fcntl): nothing to install, and every line is readable.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .common import LockBusy, sha256_file
from .common import file_lock as common_file_lock

USER_AGENT = "mini-nanochat/0.1 (+https://github.com/karpathy/nanochat spirit)"


class DownloadError(Exception):
    """A download failed for good (refused, offline, or out of retries). The message says why and what to do."""


class _Retryable(Exception):
    pass


class _DeadlinePassed(Exception):
    pass


@dataclass(frozen=True)
class Expected:
    """What a file should be, where known: its size in bytes and its sha256 (hex)."""
    size: int | None = None
    sha256: str | None = None


@contextlib.contextmanager
def file_lock(path: Path, timeout: float | None = None):
    """common.file_lock, with a DownloadError when `timeout` runs out."""
    try:
        with common_file_lock(path, timeout):
            yield
    except LockBusy:
        raise DownloadError(f"timed out after {timeout:.0f}s waiting for the lock {path}") from None


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


# ----------------------------------------------------------------------------------------------------
# One attempt: what the server says about the file, and the bytes into `<file>.partial`.

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _published(headers, into: dict) -> None:
    """Record what `headers` publish about the file: Hugging Face's X-Linked-Size and X-Linked-Etag
    (for a file stored with LFS, its sha256; what huggingface_hub reads too) and the ETag."""
    size = headers.get("X-Linked-Size")
    if size and size.isdigit():
        into["size"] = int(size)
    linked = (headers.get("X-Linked-Etag") or "").removeprefix("W/").strip('"')
    if _SHA256.fullmatch(linked):
        into["sha256"] = linked
    etag = linked or headers.get("ETag")
    if etag:
        into.setdefault("etag", etag)  # the redirect's (seen first) is the file's; a CDN's may vary by node


class _KeepPublished(urllib.request.HTTPRedirectHandler):
    """Hugging Face answers /resolve/ with a redirect to its CDN, and only that redirect carries
    X-Linked-Size / X-Linked-Etag; urllib follows it and would drop them, so they are kept here."""

    def __init__(self, into: dict):
        super().__init__()
        self.into = into

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        _published(headers, self.into)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _meta_path(part).unlink(missing_ok=True)


def _resumable(part: Path, url: str) -> dict | None:
    """What the partial bytes were (url, size, etag), or None (and no partial) if it is not known: a
    partial without its record came from an older version or a crash, and may be of another file."""
    try:
        meta = json.loads(_meta_path(part).read_text())
        if part.is_file() and meta.get("url") == url:
            return meta
    except (OSError, ValueError, AttributeError):
        pass
    _discard(part)
    return None


def _same_file(meta: dict, identity: dict) -> bool:
    """Whether the server still describes the file the partial bytes came from (size and ETag, where
    both sides know them)."""
    return all(meta.get(k) is None or identity.get(k) is None or meta[k] == identity[k] for k in ("size", "etag"))


def _seconds_left(give_up_at: float | None, timeout: float) -> float:
    if give_up_at is None:
        return timeout
    left = give_up_at - time.monotonic()
    if left <= 0:
        raise _DeadlinePassed()
    return min(timeout, left)


def _open(url: str, have: int, timeout: float, give_up_at: float | None, published: dict):
    """The response to a GET of `url` (from byte `have` when resuming), or _Retryable / DownloadError."""
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    opener = urllib.request.build_opener(_KeepPublished(published))
    try:
        return opener.open(urllib.request.Request(url, headers=headers), timeout=_seconds_left(give_up_at, timeout))
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # "range not satisfiable": we already hold every byte; the checks decide
            return None
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


def _body_range(response, have: int, part: Path) -> tuple[int, int | None]:
    """(first byte, file size or None) of the body. A 206 must start where we asked: a server that sends
    another range would splice foreign bytes into the file, so the partial is dropped and fetched whole."""
    if response.status != 206:  # 200: the whole file (the server ignored the Range, or we sent none)
        length = response.headers.get("Content-Length")
        return 0, int(length) if length and length.isdigit() else None
    match = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
    if not match or int(match[1]) != have:
        _discard(part)
        raise _Retryable(f"asked for bytes from {have:,}, the server replied 206 with Content-Range "
                         f"{response.headers.get('Content-Range')!r}: starting over")
    return have, None if match[3] == "*" else int(match[3])


def _fetch_to_partial(url: str, part: Path, timeout: float, give_up_at: float | None,
                      on_bytes: Callable[[int], None] | None) -> dict:
    """One attempt: fetch `url` into `part`, resuming from its current size when it is known to be the
    same file. Returns what the server published about the file (size, sha256, etag); raises _Retryable,
    _DeadlinePassed or DownloadError."""
    meta = _resumable(part, url)
    have = part.stat().st_size if meta else 0
    published: dict = {}
    response = _open(url, have, timeout, give_up_at, published)
    if response is None:  # 416: the partial holds every byte there is; its recorded size is checked next
        if meta and meta.get("size") is not None:
            published.setdefault("size", meta["size"])
        return published
    with response:
        _published(response.headers, published)
        start, size = _body_range(response, have, part)
        identity = {"url": url, "size": size, "etag": published.get("etag")}
        if start and not _same_file(meta, identity):
            _discard(part)  # the server now has another file under this URL: the old bytes are no use
            raise _Retryable("the file changed on the server since the partial download: starting over")
        if start == 0:  # a new file: say what it is before the first byte lands
            _meta_path(part).write_text(json.dumps(identity))
        received = start
        try:
            with open(part, "ab" if start else "wb") as f:
                while size is None or received < size:
                    _seconds_left(give_up_at, timeout)
                    # read1 returns what has arrived (read(n) waits for all n bytes), so a trickling server
                    # meets the deadline check above after at most `timeout` seconds.
                    block = response.read1(1 << 20)
                    if not block:
                        break
                    f.write(block)
                    received += len(block)
                    if on_bytes:
                        on_bytes(len(block))
        except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
            raise _Retryable(f"connection lost after {received:,} bytes: {type(e).__name__}: {e}") from e
        if size is not None and received < size:
            raise _Retryable(f"connection closed after {received:,} of {size:,} bytes")
    if size is not None:
        published.setdefault("size", size)
    return published


def _check_complete(part: Path, expected: Expected, published: dict, verify: Callable[[Path], bool] | None) -> None:
    """Raise _Retryable (and drop the partial: it is not resumed from) unless the finished file has the
    size and sha256 the caller expects and the server published, and passes `verify`."""
    size = part.stat().st_size
    for who, want in (("expected", expected.size), ("published by the server", published.get("size"))):
        if want is not None and size != want:
            _discard(part)
            raise _Retryable(f"the downloaded file has {size:,} bytes, {want:,} {who}")
    wanted = {h for h in (expected.sha256, published.get("sha256")) if h}
    if wanted and {sha256_file(part)} != wanted:
        _discard(part)
        raise _Retryable("the downloaded file's sha256 differs from the one expected or published (corrupt)")
    if verify is not None and not verify(part):
        _discard(part)
        raise _Retryable("the downloaded file failed verification (corrupt)")


def _is_complete(dest: Path, expected: Expected, verify: Callable[[Path], bool] | None) -> bool:
    """Whether a file already at `dest` is done: expected size and `verify`. Its sha256 is not read:
    hashing every shard of a corpus on every run would cost minutes; it was checked when fetched."""
    if expected.size is not None and dest.stat().st_size != expected.size:
        return False
    return verify is None or verify(dest)


def download_file(url: str, dest: str | os.PathLike, *, verify: Callable[[Path], bool] | None = None,
                  expected: Expected | None = None, retries: int = 5, backoff: float = 1.0, timeout: float = 60.0,
                  deadline: float | None = 3600.0, on_bytes: Callable[[int], None] | None = None,
                  lock_timeout: float | None = None) -> Path:
    """Download `url` to `dest` robustly (see the module docstring). Returns `dest`.

    `verify(path) -> bool` checks a finished file (e.g. `verify_parquet`); `expected` is the size and
    sha256 it must have (from a manifest), checked beside what the server publishes. An existing `dest`
    that passes `verify` and has the expected size is not downloaded again. `timeout` bounds each read,
    `deadline` the whole download, waits between retries included (None: no deadline). Raises
    DownloadError with a readable message when it gives up.
    """
    dest = Path(dest)
    expected = expected or Expected()
    part = dest.with_name(dest.name + ".partial")
    with file_lock(dest.with_name(dest.name + ".lock"), timeout=lock_timeout):
        if dest.exists():
            if _is_complete(dest, expected, verify):
                return dest
            dest.unlink()  # present but corrupt: fetch again
        give_up_at = None if deadline is None else time.monotonic() + deadline
        last: Exception | None = None
        try:
            for attempt in range(retries + 1):
                if attempt:
                    pause = backoff * 2 ** (attempt - 1)
                    if give_up_at is not None and time.monotonic() + pause >= give_up_at:
                        raise _DeadlinePassed()
                    time.sleep(pause)
                try:
                    published = _fetch_to_partial(url, part, timeout, give_up_at, on_bytes)
                    _check_complete(part, expected, published, verify)
                except _Retryable as e:
                    last = e
                    continue
                os.replace(part, dest)
                _meta_path(part).unlink(missing_ok=True)
                return dest
        except _DeadlinePassed:
            have = part.stat().st_size if part.exists() else 0
            why = f"; last error: {last}" if last else ""
            raise DownloadError(f"{url} did not finish within its deadline of {deadline:.0f}s ({have:,} bytes "
                                f"so far, kept for the next run{why}): the server is too slow or stalls") from None
        raise DownloadError(f"giving up on {url} after {retries + 1} attempts; last error: {last}")


def download_many(jobs: list[tuple], *, workers: int = 4, verify: Callable[[Path], bool] | None = None,
                  desc: str = "download", **kwargs) -> list[Path]:
    """Download several (url, dest) or (url, dest, Expected) jobs in parallel threads with one byte-level
    progress bar. All are attempted; if any fails, a DownloadError listing every failure is raised at the end."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="B", unit_scale=True, unit_divisor=1024)
    lock = threading.Lock()

    def on_bytes(n: int) -> None:
        with lock:
            bar.update(n)

    def one(job):
        url, dest, *expected = job
        try:
            return download_file(url, dest, verify=verify, expected=expected[0] if expected else None,
                                 on_bytes=on_bytes, **kwargs)
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
