"""Dramatiq's worker log lines under a node (``node/worker_logs.py``)."""

from __future__ import annotations

import logging

from dramatiq import Message

from node.errors import StorageUnavailable
from node.worker_logs import _WorkerLines


def record(exception: BaseException) -> logging.LogRecord:
    message = Message(queue_name="q", actor_name="simulate", args=("secret prompt",), kwargs={}, options={})
    try:
        raise exception
    except BaseException as e:
        exc_info = (type(e), e, e.__traceback__)
    return logging.LogRecord(
        "dramatiq.worker.WorkerThread",
        logging.ERROR,
        __file__,
        1,
        "Failed to process message %s with unhandled exception.",
        (message,),
        exc_info,
    )


def test_a_job_whose_storage_failed_is_one_warning_line_without_its_arguments():
    line = record(StorageUnavailable("'k': local storage '/s': database or disk is full"))
    assert _WorkerLines().filter(line)
    assert line.levelno == logging.WARNING and line.exc_info is None
    text = line.getMessage()
    assert text.startswith("simulate[") and "database or disk is full" in text and "handing it back" in text
    assert "secret prompt" not in text


def test_any_other_failure_keeps_its_traceback_and_level():
    line = record(RuntimeError("boom"))
    assert _WorkerLines().filter(line)
    assert line.levelno == logging.ERROR and line.exc_info is not None
    assert "secret prompt" not in line.getMessage()
