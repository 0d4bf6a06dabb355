"""One storage contract, run against the local directory and a real S3 endpoint alike."""

from __future__ import annotations

import os
import threading

import pytest

from node.errors import ConfigError, ObjectNotFound, PreconditionFailed, StorageError
from node.storage import LocalStorage, Storage, open_storage
from node.storage.s3 import S3Storage

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["file", "s3"])
def backend(request, tmp_path) -> Storage:
    if request.param == "file":
        return open_storage((tmp_path / "store").as_uri())
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    storage = open_storage(f"s3://{bucket}/burrow", endpoint_url=endpoint)
    storage.transfer_config.multipart_threshold = 5 * 1024 * 1024  # exercise multipart on a small file
    storage.transfer_config.multipart_chunksize = 5 * 1024 * 1024
    return storage


class TestStorageContract:
    def test_put_get_head_delete(self, backend: Storage):
        info = backend.put("jobs/1/record.json", b'{"status": "queued"}')
        data, got = backend.get("jobs/1/record.json")
        assert data == b'{"status": "queued"}'
        assert got.etag == info.etag and got.size == len(data)
        assert backend.head("jobs/1/record.json") == got
        backend.delete("jobs/1/record.json")
        assert backend.head("jobs/1/record.json") is None
        backend.delete("jobs/1/record.json")  # idempotent

    def test_missing_key(self, backend: Storage):
        with pytest.raises(ObjectNotFound):
            backend.get("jobs/none/record.json")
        assert backend.head("jobs/none/record.json") is None

    def test_list_by_prefix_in_order(self, backend: Storage):
        for key in ("jobs/b/x", "jobs/a/y", "jobs/a/x", "other/z"):
            backend.put(key, b"1")
        assert list(backend.list("jobs/")) == ["jobs/a/x", "jobs/a/y", "jobs/b/x"]
        assert list(backend.list("jobs/a/")) == ["jobs/a/x", "jobs/a/y"]

    def test_create_only_if_absent(self, backend: Storage):
        backend.put("jobs/1/manifest", b"first", if_none_match=True)
        with pytest.raises(PreconditionFailed):
            backend.put("jobs/1/manifest", b"second", if_none_match=True)
        assert backend.get("jobs/1/manifest")[0] == b"first"

    def test_replace_only_if_unchanged(self, backend: Storage):
        first = backend.put("jobs/1/manifest", b"v1")
        second = backend.put("jobs/1/manifest", b"v2", if_match=first.etag)
        with pytest.raises(PreconditionFailed):
            backend.put("jobs/1/manifest", b"stale", if_match=first.etag)
        assert backend.get("jobs/1/manifest")[0] == b"v2"
        assert backend.put("jobs/1/manifest", b"v3", if_match=second.etag).etag != second.etag

    def test_concurrent_conditional_writers_never_lose_an_update(self, backend: Storage):
        backend.put("counter", b"0")

        def increment(times: int) -> None:
            done = 0
            while done < times:
                data, info = backend.get("counter")
                try:
                    backend.put("counter", str(int(data) + 1).encode(), if_match=info.etag)
                    done += 1
                except PreconditionFailed:
                    continue

        threads = [threading.Thread(target=increment, args=(10,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert backend.get("counter")[0] == b"40"

    def test_large_file_round_trip(self, backend: Storage, tmp_path):
        source = tmp_path / "checkpoint.bin"
        payload = os.urandom(12 * 1024 * 1024)
        source.write_bytes(payload)
        info = backend.upload_file("jobs/1/checkpoints/000001.bin", source)
        assert info.size == len(payload)
        target = tmp_path / "restored" / "checkpoint.bin"
        backend.download_file("jobs/1/checkpoints/000001.bin", target)
        assert target.read_bytes() == payload
        assert not [p for p in target.parent.iterdir() if p.name != "checkpoint.bin"]  # no temp files left

    def test_bad_keys_are_refused(self, backend: Storage):
        for key in ("", "/abs", "jobs/../../etc", "jobs//x"):
            with pytest.raises(StorageError, match="invalid storage key"):
                backend.put(key, b"x")


def test_open_storage_picks_backend_and_rejects_unknown(tmp_path, s3_endpoint):
    assert isinstance(open_storage((tmp_path / "x").as_uri()), LocalStorage)
    assert isinstance(open_storage("s3://bucket/prefix", endpoint_url=s3_endpoint), S3Storage)
    with pytest.raises(ConfigError, match="BURROW_STORAGE_URL"):
        open_storage("ftp://host/path")
    with pytest.raises(ConfigError, match="names no bucket"):
        open_storage("s3:///prefix")


def test_local_etags_never_repeat_and_lock_files_stay_bounded(tmp_path):
    # Given a local store (ext4 reuses inode numbers, and a coarse clock repeats mtimes)
    storage = LocalStorage(tmp_path / "store")
    info = storage.put("jobs/1/record.json", b"same size")

    # When one key is rewritten 2,000 times, each a conditional write on the previous ETag
    etags = {info.etag}
    for _ in range(2000):
        info = storage.put("jobs/1/record.json", b"same size", if_match=info.etag)
        etags.add(info.etag)

    # Then every write had an ETag of its own, so no stale writer can ever win by coincidence
    assert len(etags) == 2001
    assert storage.head("jobs/1/record.json").etag == info.etag == storage.get("jobs/1/record.json")[1].etag
    # and conditional writes to many keys leave a bounded number of lock files
    for n in range(300):
        storage.put(f"many/{n}/record.json", b"{}", if_none_match=True)
    assert len(list((tmp_path / "store" / ".locks").iterdir())) <= 64
