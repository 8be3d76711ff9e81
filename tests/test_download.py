"""Download robustness against a real HTTP server on loopback: a connection dropped mid-file and resumed
with a Range request, HTTP 500 then a retry, a corrupt file detected and fetched again, a server that
ignores Range, refusals and offline errors, two processes asking for the same shard, and the `data` stage
fetching a remote corpus from a mirror."""
from __future__ import annotations

import http.server
import io
import random
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mini_nanochat.download import DownloadError, download_file, verify_parquet


def make_parquet(n_rows: int = 300, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    texts = ["".join(rng.choice("abcdefghij klmnop") for _ in range(rng.randint(200, 800))) for _ in range(n_rows)]
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf, row_group_size=50)
    return buf.getvalue()


class FaultyServer:
    """Serves `files` (name -> bytes). `faults[name]` is a list of faults consumed one per request:
    "drop" (send 40% of the body, then close), "500", "corrupt" (garbage of the same length), "404";
    `ignore_range` serves 200 + the whole file whatever the Range; `delay` sleeps per 16 KiB block."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.faults, self.log = files, {}, []
        self.ignore_range, self.delay = False, 0.0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                fault = outer.faults.get(name, []).pop(0) if outer.faults.get(name) else None
                rng = self.headers.get("Range")
                outer.log.append((name, rng, fault))
                if name not in outer.files or fault == "404":
                    self.send_error(404)
                    return
                if fault == "500":
                    self.send_error(500)
                    return
                body = outer.files[name]
                if fault == "corrupt":
                    body = bytes(random.Random(1).randrange(256) for _ in range(len(body)))
                start = 0
                if rng and not outer.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if fault == "drop":
                    self.wfile.write(payload[: int(len(payload) * 0.4)])
                    self.wfile.flush()
                    self.connection.close()
                    return
                for i in range(0, len(payload), 16384):
                    self.wfile.write(payload[i:i + 16384])
                    if outer.delay:
                        time.sleep(outer.delay)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


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
