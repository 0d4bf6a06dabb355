"""Checkpoints: fencing between attempts, newest-wins background uploads, surviving a store outage."""

from __future__ import annotations

import threading

import pytest

from node.attempt.checkpoints import Checkpointer, manifest_key
from node.errors import CorruptCheckpoint, InvalidInput
from node.storage import Storage, open_storage

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path) -> Storage:
    if request.param == "file":
        return open_storage((tmp_path / "store").as_uri())
    return open_storage(
        f"s3://{request.getfixturevalue('s3_bucket')}", endpoint_url=request.getfixturevalue("s3_endpoint")
    )


class Wrapped(Storage):
    """Delegates to a real backend, letting a test step in before a call."""

    def __init__(self, inner: Storage, before_put=None, fail_puts: int = 0) -> None:
        self.inner = inner
        self.before_put = before_put
        self.fail_puts = fail_puts
        self.failures = 0

    def put(self, key, data, **kwargs):
        if self.failures < self.fail_puts:
            self.failures += 1
            raise ConnectionError("endpoint unreachable")
        if self.before_put is not None:
            self.before_put(key)
        return self.inner.put(key, data, **kwargs)

    def get(self, key):
        return self.inner.get(key)

    def head(self, key):
        return self.inner.head(key)

    def delete(self, key):
        return self.inner.delete(key)

    def list(self, prefix=""):
        return self.inner.list(prefix)

    def upload_file(self, key, path):
        return self.inner.upload_file(key, path)

    def download_file(self, key, path):
        return self.inner.download_file(key, path)


def test_bytes_checkpoint_round_trip(storage):
    checkpoint = Checkpointer(storage, "job", 1)
    assert checkpoint.load() is None
    checkpoint.save(b"state-1", step=1)
    checkpoint.save(b"state-2", step=2)
    assert checkpoint.flush(10)
    assert checkpoint.load() == b"state-2"
    assert checkpoint.latest()["meta"] == {"step": 2}


def test_file_and_directory_checkpoints_round_trip(storage, tmp_path):
    source = tmp_path / "model"
    (source / "sub").mkdir(parents=True)
    (source / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    (source / "sub" / "optimizer.json").write_text('{"lr": 0.1}')
    checkpoint = Checkpointer(storage, "job-dir", 1)
    checkpoint.save(source)
    (source / "weights.bin").write_bytes(b"changed after save")  # the snapshot was taken at save time
    assert checkpoint.flush(10)
    restored = Checkpointer(storage, "job-dir", 2).load_to(tmp_path / "restored")
    assert (restored / "weights.bin").read_bytes() == b"\x00\x01" * 1000
    assert (restored / "sub" / "optimizer.json").read_text() == '{"lr": 0.1}'

    single = tmp_path / "single.bin"
    single.write_bytes(b"abc")
    file_checkpoint = Checkpointer(storage, "job-file", 1)
    file_checkpoint.save(single)
    assert file_checkpoint.flush(10)
    assert Checkpointer(storage, "job-file", 2).load_to(tmp_path / "out.bin").read_bytes() == b"abc"


def test_an_older_attempt_cannot_replace_a_newer_attempts_checkpoint(storage):
    # Given attempt 1 still running somewhere while attempt 2 has taken over and checkpointed
    fenced = threading.Event()
    old = Checkpointer(storage, "job", 1, on_fenced=fenced.set)
    new = Checkpointer(storage, "job", 2)
    old.save(b"old-1")
    assert old.flush(10)
    new.save(b"new-1")
    assert new.flush(10)

    # When the old attempt saves again
    old.save(b"old-2")
    assert old.flush(10)

    # Then the newer checkpoint stands and the old attempt is told it is fenced out
    assert new.load() == b"new-1" and new.latest()["attempt"] == 2
    assert fenced.is_set() and old.fenced


def test_fencing_holds_in_the_race_between_reading_and_writing_the_manifest(storage):
    # Given the old attempt has read the manifest (attempt 1) and is about to replace it...
    new = Checkpointer(storage, "job", 2)

    def newer_attempt_sneaks_in(key: str) -> None:
        if key == manifest_key("job") and new.uploaded is None:
            new.save(b"new")  # ...when attempt 2 writes its manifest in between
            assert new.flush(10)

    old_first = Checkpointer(storage, "job", 1)
    old_first.save(b"old-0")
    assert old_first.flush(10)
    fenced = threading.Event()
    old = Checkpointer(Wrapped(storage, before_put=newer_attempt_sneaks_in), "job", 1, on_fenced=fenced.set)
    old._seq = 1
    old.save(b"old-late")
    assert old.flush(10)

    # Then the conditional write refuses the stale replacement
    assert new.load() == b"new" and new.latest()["attempt"] == 2
    assert fenced.is_set()


def test_newest_wins_while_an_upload_is_slow(tmp_path):
    release = threading.Event()
    first_put_started = threading.Event()

    def slow_first_blob(key: str) -> None:
        if key.endswith("-000001"):
            first_put_started.set()
            release.wait(10)

    storage = Wrapped(open_storage((tmp_path / "s").as_uri()), before_put=slow_first_blob)
    checkpoint = Checkpointer(storage, "job", 1)
    checkpoint.save(b"1")
    assert first_put_started.wait(10)
    for n in range(2, 6):  # the job keeps saving while the first upload hangs
        checkpoint.save(str(n).encode())
    release.set()
    assert checkpoint.flush(10)
    assert checkpoint.load() == b"5"
    stored = [k for k in storage.list("jobs/job/checkpoints/") if not k.endswith("latest.json")]
    assert stored == ["jobs/job/checkpoints/00001-000005"]  # 2..4 were superseded, 1 was replaced


def test_a_checkpoint_saved_during_a_store_outage_lands_when_the_store_is_back(tmp_path):
    storage = Wrapped(open_storage((tmp_path / "s").as_uri()), fail_puts=3)
    checkpoint = Checkpointer(storage, "job", 1, retry_min_s=0.05, retry_max_s=0.2)
    checkpoint.save(b"during outage")  # returns at once: the job is not blocked
    assert checkpoint.flush(10)
    assert storage.failures == 3 and checkpoint.last_error is None
    assert checkpoint.load() == b"during outage"


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        (b'{"attempt": 1, "se', "is not JSON"),
        (b'["bytes"]', "it is a JSON list, not an object"),
        (b'{"attempt": 1, "seq": 1, "kind": "pickle", "key": "jobs/job/checkpoints/x"}', "kind 'pickle'"),
        (b'{"attempt": 1, "seq": 1, "kind": "bytes", "key": "jobs/other/checkpoints/x"}', "key must be under"),
        (b'{"attempt": 1, "seq": 1, "kind": "bytes", "key": "jobs/job/checkpoints/../../x"}', "key must be under"),
        (b'{"attempt": "1", "seq": 1, "kind": "bytes", "key": "jobs/job/checkpoints/x"}', "attempt must be"),
    ],
)
def test_an_unusable_manifest_is_an_error_naming_it_and_the_next_save_replaces_it(storage, manifest, problem):
    # Given a job whose checkpoint manifest was damaged (a hand edit, a foreign tool)
    storage.put(manifest_key("job"), manifest)

    # When an attempt loads its checkpoint, it learns the manifest is unusable (retrying cannot help)
    with pytest.raises(CorruptCheckpoint) as error:
        Checkpointer(storage, "job", 2).load()
    assert isinstance(error.value, InvalidInput)  # the job is dead-lettered as malformed, not retried
    assert str(error.value).startswith(f"checkpoint {manifest_key('job')} ") and problem in str(error.value)
    assert f"delete {manifest_key('job')} to start the job over" in str(error.value)

    # And an attempt that saves anyway (it caught the error to start over) replaces the damaged manifest
    fresh = Checkpointer(storage, "job", 2)
    fresh.save(b"fresh")
    assert fresh.flush(10)
    assert fresh.load() == b"fresh" and fresh.last_error is None


def test_a_directory_checkpoint_that_is_not_an_archive_is_an_error_naming_it(storage, tmp_path):
    source = tmp_path / "model"
    source.mkdir()
    (source / "weights.bin").write_bytes(b"w")
    checkpoint = Checkpointer(storage, "job-dir", 1)
    checkpoint.save(source)
    assert checkpoint.flush(10)
    storage.put(checkpoint.latest()["key"], b"not a tar archive")
    with pytest.raises(CorruptCheckpoint, match="is not a readable archive"):
        Checkpointer(storage, "job-dir", 2).load_to(tmp_path / "restored")


@pytest.mark.parametrize(("meta", "error"), [({"at": object()}, TypeError), ({"loss": float("nan")}, ValueError)])
def test_checkpoint_meta_that_is_not_standard_json_is_refused_at_save_not_retried_in_the_background(
    tmp_path, meta, error
):
    # (the background upload failed on every try while the job believed itself checkpointed)
    checkpoint = Checkpointer(open_storage((tmp_path / "store").as_uri()), "job", 1)
    with pytest.raises(error, match="checkpoint meta must be"):
        checkpoint.save(b"state", **meta)
    checkpoint.save(b"state", step=1)
    assert checkpoint.flush(10) and checkpoint.latest()["meta"] == {"step": 1}
