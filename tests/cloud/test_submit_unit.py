"""Pure parts of job submission: cancel in the job's record and in the one decision point, batch rows."""

from __future__ import annotations

import pytest

from cloud.arguments import check_argument_types
from cloud.batch import _csv, _jsonl, batch_id_for, batch_of, convert_cells, read_rows
from cloud.submit import JobHandle, idempotent_job_id
from node.attempt.policy import Action, Limits, decide
from node.contract.job_options import JobOptions
from node.contract.record import JobStatus, Outcome, new_record, request_cancel, set_status
from node.errors import MalformedMessage

JOB = JobOptions(job_id="j1")


def test_a_queued_job_is_cancelled_at_once_a_running_one_is_asked_to_stop_a_finished_one_is_left_alone():
    record = new_record("j1")
    set_status(record, JobStatus.QUEUED)
    assert request_cancel(record, now=1.0) is JobStatus.CANCELLED and record["status"] == "cancelled"
    running = new_record("j2")
    set_status(running, JobStatus.RUNNING)
    assert request_cancel(running, now=1.0) is None and running["status"] == "running" and running["cancel"]
    done = new_record("j3")
    set_status(done, JobStatus.SUCCEEDED)
    assert request_cancel(done, now=1.0) is JobStatus.SUCCEEDED and "cancel" not in done


@pytest.mark.parametrize("outcome", [None, Outcome.FAILED, Outcome.INTERRUPTED, Outcome.CRASHED, Outcome.LOST])
def test_a_job_whose_cancel_was_requested_is_never_run_retried_handed_back_or_given_up(outcome):
    decision = decide(
        JOB,
        limits=Limits(),
        status=JobStatus.RUNNING,
        outcome=outcome,
        now=0,
        node_id="n",
        expires_at=None,
        cancelled=True,
    )
    assert decision.action is Action.ACK and decision.status is JobStatus.CANCELLED


def test_a_cancelled_job_ends_cancelled_but_a_success_that_raced_the_cancel_stands():
    common = dict(limits=Limits(), now=0, node_id="n", expires_at=None)
    ended = decide(JOB, status=JobStatus.RUNNING, outcome=Outcome.CANCELLED, **common)
    assert ended.action is Action.ACK and ended.status is JobStatus.CANCELLED
    success = decide(JOB, status=JobStatus.RUNNING, outcome=Outcome.SUCCEEDED, cancelled=True, **common)
    assert success.action is Action.SUCCEED
    copy = decide(JOB, status=JobStatus.CANCELLED, outcome=None, **common)
    assert copy.action is Action.ACK and copy.status is None


def test_csv_rows_keep_their_file_line_numbers_and_bad_ones_are_named():
    rows, bad = _csv('seed,samples\n1,10\n\n"2",20\n3,30,x\n"4,40\n')
    assert rows == [(2, {"seed": "1", "samples": "10"}), (4, {"seed": "2", "samples": "20"})]
    assert bad[0] == (5, "3 values for 2 columns")
    rows, bad = _jsonl('{"seed": 1}\n\n[1]\n{bad\n')
    assert rows == [(1, {"seed": 1})]
    assert [line for line, _ in bad] == [3, 4]


def test_csv_cells_convert_by_the_actors_type_hints():
    def actor(seed: int, rate: float, flag: bool, name: str, extra=None) -> None: ...

    assert convert_cells(actor, {"seed": "3", "rate": "0.5", "flag": "yes", "name": "007", "extra": "[1]"}) == {
        "seed": 3,
        "rate": 0.5,
        "flag": True,
        "name": "007",
        "extra": [1],
    }
    with pytest.raises(ValueError, match="column 'seed'"):
        convert_cells(actor, {"seed": "three"})
    for cell in ("nan", "inf", "-Infinity"):  # float() reads them; JSON cannot carry them
        with pytest.raises(ValueError, match="column 'rate'"):
            convert_cells(actor, {"seed": "1", "rate": cell, "flag": "no", "name": "x"})


def test_ids_are_stable_valid_and_tell_a_batch_job_from_others():
    assert idempotent_job_id("order 17/α") == idempotent_job_id("order 17/α")
    JobOptions(job_id=idempotent_job_id("x" * 10_000))  # any key gives a valid job id
    rows = [(2, {"seed": "1"})]
    assert batch_id_for("simulate", rows) == batch_id_for("simulate", list(rows))
    assert batch_id_for("simulate", rows) != batch_id_for("train", rows)
    batch = batch_id_for("simulate", rows)
    assert batch_of(f"{batch}-2") == batch and batch_of("k-abc") is None


def test_a_byte_order_mark_and_crlf_line_ends_are_not_part_of_the_rows(tmp_path):
    # (Excel's "CSV UTF-8" starts with one; it used to turn the first column into "\ufeffseed")
    for name, text in (("rows.csv", "seed,samples\r\n1,10\r\n"), ("rows.jsonl", '{"seed": 1, "samples": 10}\r\n')):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        rows, bad = read_rows(path)
        assert bad == [] and [fields["seed"] for _, fields in rows] in (["1"], [1]), rows


def test_arguments_are_checked_against_the_actors_plain_annotations():
    def actor(seed: int, rate: float = 1.0, name: str | None = None, tags: list[str] | None = None, other=None): ...

    check_argument_types(actor, [1], {"rate": 2, "name": None, "tags": ["a"], "other": object()})
    check_argument_types(actor, [], {"seed": 1, "rate": 0.5, "name": "x"})
    for args, kwargs, named in (
        (["x"], {}, "'seed'"),
        ([True], {}, "'seed'"),  # a bool is not an int here
        ([1.5], {}, "'seed'"),
        ([1], {"rate": "fast"}, "'rate'"),
        ([1], {"name": 7}, "'name'"),
        ([1], {"tags": "a,b"}, "'tags'"),
    ):
        with pytest.raises(MalformedMessage, match=named) as caught:
            check_argument_types(actor, args, kwargs)
        assert "actor() wants" in str(caught.value)


def test_jsonl_rows_take_standard_json_only():
    rows, bad = _jsonl('{"seed": 1}\n{"seed": NaN}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    assert rows == [(1, {"seed": 1})]
    assert [(n, "NaN is not standard JSON" in why or "nested too deeply" in why) for n, why in bad] == [
        (2, True),
        (3, True),
    ]


def test_csv_cells_keep_their_line_breaks_and_line_separators_and_a_lost_quote_is_named():
    rows, bad = _csv('prompt,seed\n"two\nlines",1\nsee\u2028this,2\n"never closed,3\n')
    assert rows == [(3, {"prompt": "two\nlines", "seed": "1"}), (4, {"prompt": "see\u2028this", "seed": "2"})]
    assert bad == [(5, "not CSV: unexpected end of data")]


def test_jsonl_lines_end_only_at_newlines():
    rows, bad = _jsonl('{"prompt": "a\u2028b"}\r\n{"prompt": "c"}\n')
    assert (rows, bad) == ([(1, {"prompt": "a\u2028b"}), (2, {"prompt": "c"})], [])


@pytest.mark.parametrize("timeout", [float("nan"), -1, "5", True])
def test_a_timeout_that_could_never_end_or_is_not_seconds_is_refused_before_waiting(timeout):
    handle = JobHandle(None, "j-1", job_type="polling", submitted_at=None)  # never reached: refused first
    with pytest.raises(ValueError, match="timeout must be None or a number of seconds"):
        handle.wait(timeout)
    with pytest.raises(ValueError, match="timeout must be None or a number of seconds"):
        handle.result(timeout)
    with pytest.raises(ValueError, match="timeout must be None or a number of seconds"):
        handle.stream(timeout=timeout)
    with pytest.raises(ValueError, match="from_seq must be a chunk number"):
        handle.stream(-1)


@pytest.mark.parametrize("items", [5, None, "seed=1", {"seed": 1}])
def test_a_batch_that_is_not_a_sequence_of_argument_sets_is_refused_saying_so(items):
    from cloud.submit import Client

    client = Client.__new__(Client)  # (refused before the client touches the broker)
    with pytest.raises(TypeError, match="items must be a list of argument sets"):
        client.submit_batch("simulate", items)


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_csv_separated_by_semicolons_or_tabs_is_read_by_its_header(separator):
    # (Excel writes ';' where the comma is the decimal separator: the file was one column named "seed;samples")
    rows, bad = _csv(f"seed{separator}samples\n1{separator}10\n2{separator}20\n")
    assert rows == [(2, {"seed": "1", "samples": "10"}), (3, {"seed": "2", "samples": "20"})] and bad == []
    # a comma in the header keeps commas, whatever the cells hold
    assert _csv("seed,note\n1,a;b\n")[0] == [(2, {"seed": "1", "note": "a;b"})]
