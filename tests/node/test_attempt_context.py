"""The attempt's job context: parts built on first use, once; a stop request wakes a waiting actor."""

from __future__ import annotations

import os
import threading

import pytest

from node.attempt.context import AttemptContext, Inputs
from node.contract.job_options import JobOptions
from node.errors import InvalidInput
from node.storage import LocalStorage
from node.unique import unique_hex


def _context(built: list[int]) -> AttemptContext:
    def parts(context: AttemptContext):
        built.append(context.attempt)
        return "checkpoint", "artifacts", "inputs", "stream"

    return AttemptContext(options=JobOptions(job_id="j1"), attempt=3, attempt_id="a1", parts=parts)


def test_a_context_builds_its_checkpoint_artifacts_inputs_and_stream_only_when_the_actor_first_uses_one():
    built: list[int] = []
    context = _context(built)
    assert not context.built and built == []  # a short job that touches none of them builds nothing

    assert context.artifacts == "artifacts"
    assert (context.checkpoint, context.inputs, context.stream) == ("checkpoint", "inputs", "stream")
    assert context.built and built == [3]  # once, with the attempt number current at that moment


def test_a_stop_request_from_another_thread_wakes_an_actor_waiting_for_it():
    context = _context([])
    waiting = threading.Event()
    woke: list[bool] = []

    def actor() -> None:
        waiting.set()
        woke.append(context.wait_for_stop(timeout_s=60))

    thread = threading.Thread(target=actor)
    thread.start()
    waiting.wait()
    context.request_stop("preempted")
    context.request_stop("timeout")  # the first reason is kept
    thread.join()
    assert woke == [True] and context.should_stop and context.stop_reason == "preempted"
    assert context.wait_for_stop(timeout_s=60)  # already stopped: returns at once


def test_unique_ids_do_not_repeat_in_a_process_nor_between_a_parent_and_its_forked_child():
    ids = {unique_hex() for _ in range(10_000)}
    assert len(ids) == 10_000 and all(len(i) == 32 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id
        os.write(write, unique_hex().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_id = os.read(read, 64).decode()
    assert child_id != unique_hex() and child_id not in ids


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("inputs/" + "0" * 64, "is not in storage"),
        ("records/aa/j1.json", "is not an input reference"),
        (7, "is not an input reference"),
    ],
)
def test_an_input_that_is_not_there_is_invalid_input_not_a_failure_to_retry(tmp_path, ref, problem):
    # (retrying elsewhere reads the same storage: the job is dead-lettered naming the reference, once)
    inputs = Inputs(LocalStorage(tmp_path))
    for read in (lambda: inputs.get(ref), lambda: inputs.download(ref, tmp_path / "out")):
        with pytest.raises(InvalidInput, match=problem):
            read()


@pytest.mark.parametrize(
    ("name", "data", "error", "says"),
    [
        ("../x", b"a", ValueError, "artifact name '../x': use a relative path"),
        ("", b"a", ValueError, "must be a string of 1-255 characters"),
        ("a" * 256, b"a", ValueError, "must be a string of 1-255 characters"),
        ("a\x00b", b"a", ValueError, "no control character"),
        ("n.bin", 5, TypeError, "data must be bytes or a file path, got int"),
        ("out.txt", "hello world", FileNotFoundError, "to store text, pass bytes"),
        ("d.tar", ".", IsADirectoryError, "is a directory"),
    ],
)
def test_an_artifact_the_actor_got_wrong_fails_at_once_not_after_a_minute_of_retries(tmp_path, name, data, error, says):
    from node.attempt.context import Artifacts

    calls: list[str] = []

    class Counting(LocalStorage):
        def put(self, key, data, **kwargs):
            calls.append(key)
            return super().put(key, data, **kwargs)

    artifacts = Artifacts(Counting(tmp_path), "j1", "a1", patience_s=3600)
    with pytest.raises(error, match=says):
        artifacts.put(name, data)
    assert calls == [] and artifacts.keys == {}
    assert artifacts.put("eval/scores.json", b"{}") == "jobs/j1/artifacts/a1/eval/scores.json"
