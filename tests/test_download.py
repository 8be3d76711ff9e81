"""Download robustness against a real HTTP server on loopback: a connection dropped mid-file and resumed
with a Range request, HTTP 500 then a retry, a corrupt file detected and fetched again, a server that
ignores Range or replies with another range, a partial file of another file, a server that trickles,
the size and sha256 a source publishes (Hugging Face's redirect headers) or a manifest expects, refusals
and offline errors, two processes asking for the same shard, and the `data` stage fetching a remote
corpus from a mirror."""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import stat
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopback import FaultyServer  # noqa: E402 - tests/ is on sys.path
from mini_nanochat.download import DownloadError, Expected, download_file, verify_parquet


def make_parquet(n_rows: int = 300, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    texts = ["".join(rng.choice("abcdefghij klmnop") for _ in range(rng.randint(200, 800))) for _ in range(n_rows)]
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf, row_group_size=50)
    return buf.getvalue()


FAST = dict(retries=3, backoff=0.01, timeout=10)


@pytest.fixture
def shard():
    return make_parquet()


def test_plain_download_and_skip_when_present(tmp_path, shard):
    with FaultyServer({"s.parquet": shard}) as srv:
        dest = download_file(f"{srv.url}/s.parquet", tmp_path / "s.parquet", verify=verify_parquet, **FAST)
        assert dest.read_bytes() == shard
        download_file(f"{srv.url}/s.parquet", dest, verify=verify_parquet, **FAST)
        assert len(srv.log) == 1  # already complete and valid: not fetched again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.parquet", "s.parquet.lock"]


def test_dropped_connection_resumes_with_range(tmp_path, shard):
    with FaultyServer({"s.parquet": shard}) as srv:
        srv.faults["s.parquet"] = ["drop"]
        dest = download_file(f"{srv.url}/s.parquet", tmp_path / "s.parquet", verify=verify_parquet, **FAST)
        assert dest.read_bytes() == shard
        (_, r1, f1), (_, r2, f2) = srv.log
        assert f1 == "drop" and r1 is None
        assert r2 == f"bytes={int(len(shard) * 0.4)}-"  # the second request asked only for the rest


def test_server_ignoring_range_restarts_cleanly(tmp_path, shard):
    with FaultyServer({"s.parquet": shard}) as srv:
        srv.faults["s.parquet"] = ["drop"]
        srv.ignore_range = True
        dest = download_file(f"{srv.url}/s.parquet", tmp_path / "s.parquet", verify=verify_parquet, **FAST)
        assert dest.read_bytes() == shard  # a 200 reply overwrote the partial file instead of appending


def test_http_500_then_retry(tmp_path, shard):
    with FaultyServer({"s.parquet": shard}) as srv:
        srv.faults["s.parquet"] = ["500", "500"]
        dest = download_file(f"{srv.url}/s.parquet", tmp_path / "s.parquet", verify=verify_parquet, **FAST)
        assert dest.read_bytes() == shard and len(srv.log) == 3


def test_corrupt_file_detected_and_fetched_again(tmp_path, shard):
    with FaultyServer({"s.parquet": shard}) as srv:
        srv.faults["s.parquet"] = ["corrupt"]
        dest = download_file(f"{srv.url}/s.parquet", tmp_path / "s.parquet", verify=verify_parquet, **FAST)
        assert dest.read_bytes() == shard and len(srv.log) == 2
        assert srv.log[1][1] is None  # corrupt bytes are not resumed from: a full new download
        # A file damaged on disk later is also detected and replaced.
        dest.write_bytes(b"PAR1 truncated")
        download_file(f"{srv.url}/s.parquet", dest, verify=verify_parquet, **FAST)
        assert dest.read_bytes() == shard


def test_gives_up_with_clear_errors(tmp_path, shard):
    with FaultyServer({"s.parquet": shard}) as srv:
        srv.faults["s.parquet"] = ["500"] * 10
        with pytest.raises(DownloadError, match="giving up.*4 attempts.*HTTP 500"):
            download_file(f"{srv.url}/s.parquet", tmp_path / "a.parquet", verify=verify_parquet, **FAST)
        with pytest.raises(DownloadError, match="refused.*404"):
            download_file(f"{srv.url}/missing.parquet", tmp_path / "b.parquet", **FAST)
        assert [x for x in srv.log if x[0] == "missing.parquet"] == [("missing.parquet", None, None)]  # no retry
    with pytest.raises(DownloadError, match="offline"):
        download_file("http://shards.invalid/s.parquet", tmp_path / "c.parquet", **FAST)
    assert not (tmp_path / "a.parquet").exists() and not (tmp_path / "b.parquet").exists()


def test_two_processes_same_shard_fetch_once(tmp_path, shard):
    code = ("import sys; from mini_nanochat.download import download_file, verify_parquet; "
            "download_file(sys.argv[1], sys.argv[2], verify=verify_parquet, retries=2, backoff=0.01)")
    with FaultyServer({"s.parquet": shard}) as srv:
        srv.delay = 0.2  # ~2 s per download: slow enough that the two processes overlap
        dest = tmp_path / "s.parquet"
        procs = [subprocess.Popen([sys.executable, "-c", code, f"{srv.url}/s.parquet", str(dest)]) for _ in range(2)]
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
        assert dest.read_bytes() == shard
        assert len(srv.log) == 1  # the second process waited on the lock and found the file complete


def test_data_stage_fetches_remote_corpus_from_mirror(tmp_path, monkeypatch):
    from mini_nanochat.dataloader import DataLoader
    from mini_nanochat.dataset import REMOTE_CORPORA, list_shards
    from mini_nanochat.stages import data
    from mini_nanochat.tokenizer import Tokenizer

    last = REMOTE_CORPORA["climbmix"].max_shard
    files = {f"shard_{i:05d}.parquet": make_parquet(seed=i) for i in (0, 1, 2, last)}
    monkeypatch.setenv("MINI_NANOCHAT_HOME", str(tmp_path))
    with FaultyServer(files) as srv:
        srv.faults["shard_00001.parquet"] = ["drop"]
        manifest = data.main(["--corpus", "climbmix", "-n", "2", "--base-url", srv.url, "--workers", "2"])
        assert manifest["num_train_shards"] == 2
        assert [p.name for p in list_shards("climbmix", "train")] == ["shard_00000.parquet", "shard_00001.parquet"]
        assert [p.name for p in list_shards("climbmix", "val")] == [f"shard_{last:05d}.parquet"]
        n_before = len(srv.log)
        data.main(["--corpus", "climbmix", "-n", "3", "--base-url", srv.url])  # only the new shard is fetched
        assert [x[0] for x in srv.log[n_before:]] == ["shard_00002.parquet"]
        srv.faults["shard_00003.parquet"] = []
        with pytest.raises(SystemExit, match="refused"):  # shard 3 does not exist on this mirror
            data.main(["--corpus", "climbmix", "-n", "4", "--base-url", srv.url])
    tok = Tokenizer.train(files["shard_00000.parquet"].decode("latin-1")[:5000].split(), 300)
    x, y = next(DataLoader(tok, 2, 16, corpus="climbmix", prefetch=0))
    assert x.shape == (2, 16) and (x[:, 0] == tok.bos_id).all()


# ---- issue #12: ranges, partials of another file, deadlines, published checksums, permissions -------


def test_206_with_another_range_is_not_appended(tmp_path, shard):
    with FaultyServer({"s.parquet": shard}) as srv:
        srv.faults["s.parquet"] = ["drop", "badrange"]
        dest = download_file(f"{srv.url}/s.parquet", tmp_path / "s.parquet", **FAST)  # no parquet check
        assert dest.read_bytes() == shard  # the whole file was not appended after the first 40%
        (_, r1, _), (_, r2, f2), (_, r3, _) = srv.log
        assert r1 is None and r2 == f"bytes={int(len(shard) * 0.4)}-" and f2 == "badrange"
        assert r3 is None  # the partial was dropped: the next request asked for the whole file


def test_partial_of_another_file_is_discarded(tmp_path, shard):
    other = make_parquet(seed=7)
    dest = tmp_path / "s.parquet"
    with FaultyServer({"s.parquet": shard}) as srv:
        url = f"{srv.url}/s.parquet"
        srv.etags["s.parquet"] = '"v2"'
        # A partial download of another file under this URL (the file was replaced on the server).
        (tmp_path / "s.parquet.partial").write_bytes(other[:5000])
        (tmp_path / "s.parquet.partial.json").write_text(json.dumps({"url": url, "size": len(other), "etag": '"v1"'}))
        assert download_file(url, dest, **FAST).read_bytes() == shard
        assert [r for _, r, _ in srv.log] == ["bytes=5000-", None]  # asked to resume, saw v2, started over
        # A partial without its record (an older version, a crash) is not resumed at all.
        dest.unlink()
        (tmp_path / "s.parquet.partial").write_bytes(other[:5000])
        assert download_file(url, dest, **FAST).read_bytes() == shard
        assert srv.log[-1][1] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.parquet", "s.parquet.lock"]


def test_file_changed_on_the_server_between_attempts(tmp_path, shard, monkeypatch):
    new = make_parquet(seed=3)
    with FaultyServer({"s.parquet": shard}) as srv:
        srv.etags["s.parquet"] = '"v1"'
        srv.faults["s.parquet"] = ["drop"]
        real_sleep = time.sleep

        def publish_new_version(seconds):  # while the client waits to retry
            srv.files["s.parquet"], srv.etags["s.parquet"] = new, '"v2"'
            real_sleep(seconds)

        monkeypatch.setattr(time, "sleep", publish_new_version)
        dest = download_file(f"{srv.url}/s.parquet", tmp_path / "s.parquet", **FAST)
        assert dest.read_bytes() == new  # not 40% of the old version followed by the rest of the new one
        assert [r for _, r, _ in srv.log][:2] == [None, f"bytes={int(len(shard) * 0.4)}-"]


def test_trickling_server_fails_within_the_deadline(tmp_path, shard):
    with FaultyServer({"s.parquet": shard}) as srv:
        srv.faults["s.parquet"] = ["trickle"] * 5
        t0 = time.monotonic()
        with pytest.raises(DownloadError, match=r"did not finish within its deadline of 2s \(\d+ bytes so far"):
            download_file(f"{srv.url}/s.parquet", tmp_path / "s.parquet", retries=3, backoff=0.01, timeout=5,
                          deadline=2)
        assert time.monotonic() - t0 < 4  # the per-read timeout (5 s) alone would never fire


def test_published_size_and_sha256_are_checked(tmp_path, shard):
    with FaultyServer({"s.parquet": shard}) as srv:
        srv.linked = True  # like Hugging Face: 302 with X-Linked-Size / X-Linked-Etag
        srv.faults["s.parquet"] = ["flip"]  # one byte flipped: the parquet footer still reads
        dest = download_file(f"{srv.url}/s.parquet", tmp_path / "s.parquet", verify=verify_parquet, **FAST)
        assert dest.read_bytes() == shard and [f for _, _, f in srv.log] == ["flip", None]
        # A dropped connection resumes through the redirect: the Range reaches the CDN.
        dest.unlink()
        srv.faults["s.parquet"] = ["drop"]
        assert download_file(f"{srv.url}/s.parquet", dest, **FAST).read_bytes() == shard
        assert srv.log[-1][1] == f"bytes={int(len(shard) * 0.4)}-"


def test_expected_size_and_sha256_from_a_manifest(tmp_path, shard):
    right = Expected(size=len(shard), sha256=hashlib.sha256(shard).hexdigest())
    with FaultyServer({"s.parquet": shard}) as srv:
        srv.faults["s.parquet"] = ["flip"] * 10
        with pytest.raises(DownloadError, match="4 attempts.*sha256 differs"):
            download_file(f"{srv.url}/s.parquet", tmp_path / "a.parquet", expected=right, **FAST)
        with pytest.raises(DownloadError, match=f"{len(shard):,} bytes, 123 expected"):
            download_file(f"{srv.url}/s.parquet", tmp_path / "b.parquet", expected=Expected(size=123), **FAST)
        srv.faults["s.parquet"] = []
        dest = download_file(f"{srv.url}/s.parquet", tmp_path / "c.parquet", expected=right, **FAST)
        assert dest.read_bytes() == shard
    assert not (tmp_path / "a.parquet").exists() and not (tmp_path / "a.parquet.partial").exists()


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_downloaded_file_gets_the_usual_permissions(tmp_path, shard, umask):
    old = os.umask(umask)
    try:
        with FaultyServer({"s.parquet": shard}) as srv:
            srv.faults["s.parquet"] = ["drop"]
            dest = download_file(f"{srv.url}/s.parquet", tmp_path / "s.parquet", verify=verify_parquet, **FAST)
    finally:
        os.umask(old)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask


def test_remote_corpus_manifest_records_size_and_sha256(tmp_path, monkeypatch):
    from mini_nanochat.dataset import REMOTE_CORPORA, corpus_dir, verify_corpus
    from mini_nanochat.stages import data

    last = REMOTE_CORPORA["fineweb-edu"].max_shard
    files = {f"shard_{i:05d}.parquet": make_parquet(n_rows=60, seed=i) for i in (0, 1, last)}
    monkeypatch.setenv("MINI_NANOCHAT_HOME", str(tmp_path))
    with FaultyServer(files) as srv:
        srv.linked = True
        srv.faults["shard_00001.parquet"] = ["flip"]
        manifest = data.main(["--corpus", "fineweb-edu", "-n", "2", "--base-url", srv.url])
        assert {s["file"].split("/")[1]: s["sha256"] for s in manifest["shards"]} == {
            name: hashlib.sha256(body).hexdigest() for name, body in files.items()}
        assert verify_corpus("fineweb-edu") == manifest
        # A shard truncated on disk since (its size no longer what the manifest records) is fetched again.
        shard = corpus_dir("fineweb-edu") / "train" / "shard_00000.parquet"
        shard.write_bytes(shard.read_bytes()[:-10])
        n = len(srv.log)
        assert data.main(["--corpus", "fineweb-edu", "-n", "2", "--base-url", srv.url]) == manifest
        assert [name for name, _, _ in srv.log[n:]] == ["shard_00000.parquet"]
