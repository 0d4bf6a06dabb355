"""One storage contract, run against the local directory and a real S3 endpoint alike."""

from __future__ import annotations

import os
import threading

import pytest

from node.errors import ConfigError, ObjectNotFound, PreconditionFailed, StorageError
from node.storage import LocalStorage, Storage, open_storage
from node.storage.s3 import S3Storage
from tests.rabbitmq_node import free_port

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

        threads = [threading.Thread(target=increment, args=(backend, 10)) for _ in range(4)]
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
    # two slashes make "relative" a host name: the store would silently be /path
    with pytest.raises(ConfigError, match="names host 'relative'"):
        open_storage("file://relative/path")
    assert open_storage(f"file://localhost{tmp_path}/y").root == tmp_path / "y"


@pytest.mark.parametrize(
    "url, problem",
    [
        ("file:", "names no directory"),
        ("file://", "names no directory"),
        ("file:///", "names no directory"),  # (it stored objects.sqlite in the filesystem's root)
        ("file:///tmp/x?sync=full&sync=normal", "sync given 2 times"),
        ("s3://Bad_Bucket!", "'Bad_Bucket!' is not a bucket name"),  # (botocore's error spans lines)
    ],
)
def test_storage_urls_that_name_no_usable_place_are_refused(url, problem):
    with pytest.raises(ConfigError, match=problem):
        open_storage(url)


def test_s3_errors_are_one_line(s3_endpoint):
    storage = S3Storage(bucket="ok", endpoint_url=s3_endpoint, access_key_id="a", secret_access_key="b")
    storage.bucket = "Bad_Bucket!"  # past the URL check: botocore's ParamValidationError spans two lines
    with pytest.raises(StorageError) as raised:
        storage.get("k")
    assert "\n" not in str(raised.value) and "Invalid bucket name" in str(raised.value)


def test_local_etags_never_repeat(tmp_path):
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


def increment(storage: Storage, times: int) -> None:
    """Add ``times`` to the object ``counter`` by conditional read-modify-writes, retrying lost races."""
    done = 0
    while done < times:
        data, info = storage.get("counter")
        try:
            storage.put("counter", str(int(data) + 1).encode(), if_match=info.etag)
            done += 1
        except PreconditionFailed:
            continue


def _increment_then_die(root: str, times: int) -> None:
    """In a child process: conditionally increment a counter, then die by SIGKILL (no clean close)."""
    import signal

    increment(LocalStorage(root), times)
    os.kill(os.getpid(), signal.SIGKILL)


def test_local_writes_from_processes_killed_right_after_survive_and_never_collide(tmp_path):
    # Given a local store and two processes racing conditional increments on one key
    import multiprocessing

    root = str(tmp_path / "store")
    LocalStorage(root).put("counter", b"0")
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_increment_then_die, args=(root, 200)) for _ in range(2)]

    # When each is SIGKILLed the moment its last write returned
    for child in children:
        child.start()
    for child in children:
        child.join()
    assert [c.exitcode for c in children] == [-9, -9]

    # Then every write is there, none lost to the race or the kill
    assert LocalStorage(root).get("counter")[0] == b"400"


def test_local_large_bodies_are_files_removed_with_their_object(tmp_path):
    storage = LocalStorage(tmp_path / "store")
    big = os.urandom(3 * 1024 * 1024)
    first = storage.put("jobs/1/checkpoint.bin", big)
    storage.put("jobs/1/checkpoint.bin", big[::-1], if_match=first.etag)
    blobs = [p for p in (tmp_path / "store" / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 1  # the replaced body is gone
    assert storage.get("jobs/1/checkpoint.bin")[0] == big[::-1]
    storage.delete("jobs/1/checkpoint.bin")
    assert not [p for p in (tmp_path / "store" / "blobs").rglob("*") if p.is_file()]


def test_local_reads_create_nothing_and_sync_is_chosen_by_url(tmp_path):
    missing = LocalStorage(tmp_path / "nowhere")
    assert missing.head("a/b") is None and list(missing.list()) == []
    assert not (tmp_path / "nowhere").exists()
    assert open_storage((tmp_path / "s").as_uri() + "?sync=full").sync == "full"
    assert open_storage((tmp_path / "s").as_uri()).sync == "normal"
    with pytest.raises(ConfigError, match="sync='often'"):
        open_storage((tmp_path / "s").as_uri() + "?sync=often")
    with pytest.raises(ConfigError, match="unknown option 'fsync'"):
        open_storage((tmp_path / "s").as_uri() + "?fsync=1")


@pytest.mark.parametrize("key", ["jobs/a\x00b", "jobs/\ud800", "jobs/a\nb"])
def test_keys_with_control_characters_or_lone_surrogates_are_refused(tmp_path, key):
    with pytest.raises(StorageError, match="invalid storage key"):
        LocalStorage(tmp_path).put(key, b"x")


def test_threads_opening_a_new_store_at_once_all_succeed(tmp_path):
    # The first connections race to switch a new store to WAL; SQLite answers one of them "database is
    # locked" at once. 200 new stores, six threads each, all writing first thing (failed ~4 in 200 before).
    errors: list[BaseException] = []
    for n in range(200):
        storage = LocalStorage(tmp_path / f"s{n}")
        start = threading.Barrier(6)

        def write(worker: int, storage: LocalStorage = storage, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                storage.put(f"k{worker}", b"x")
            except BaseException as e:  # collected: the assertion names them
                errors.append(e)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


def test_an_s3_endpoint_that_does_not_answer_raises_storage_errors_naming_it():
    endpoint = f"http://127.0.0.1:{free_port()}"
    down = S3Storage(bucket="b", endpoint_url=endpoint, access_key_id="a", secret_access_key="b")
    for call in (lambda: down.get("k"), lambda: down.head("k"), lambda: down.put("k", b"x"), lambda: list(down.list())):
        with pytest.raises(StorageError, match=f"S3 endpoint {endpoint}: EndpointConnectionError"):
            call()


@pytest.fixture
def full_disk(tmp_path):
    """A directory on a tmpfs of its own (root only: skipped where mounting is not allowed)."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_a_storage_error_naming_the_store_and_reads_still_work(full_disk):
    from node.errors import StorageUnavailable

    # Given a local store that holds an object, on a disk that then fills up
    storage = LocalStorage(full_disk / "store")
    storage.put("kept", b"x")
    with open(full_disk / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
        except OSError:
            pass

    # Then each write fails as one StorageUnavailable naming the store (SQLite's own error, not a failed
    # rollback after SQLite rolled back itself), and what is stored still reads
    for write in (
        lambda: storage.put("new", b"y" * 300_000),
        lambda: storage.put("kept", b"z" * 300_000),
        lambda: storage.put("big", b"w" * (2 << 20)),
    ):
        with pytest.raises(StorageUnavailable, match=r"local storage .*(full|No space left)"):
            write()
    assert storage.get("kept")[0] == b"x"
    # and once there is room again, writes work
    (full_disk / "filler").unlink()
    storage.put("new", b"y")
    assert storage.get("new")[0] == b"y"
