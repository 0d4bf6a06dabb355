"""This machine's clock, corrected to an S3 endpoint's.

Consumer machines drift: a WSL2 guest falls minutes or hours behind after its host sleeps. S3 (AWS, R2)
refuses a request signed more than 15 minutes off its own clock (``RequestTimeTooSkewed``), so such a node
could store nothing: every job it took would fail its record writes. And it would judge a job's expiry
(``expires_at``, the submitter's clock) by a wrong time.

botocore has no clock-skew correction (boto/boto3#1252, open since 2017; the AWS SDKs for JavaScript, Java
and C++ have one), so this module adds it through botocore's own extension points, on one client at a time:

* every response's ``Date`` header (the endpoint's clock, to the second), with the times the request left
  and its answer arrived, bounds the offset; an offset outside those bounds is replaced (``needs-retry``
  event, which botocore emits after every attempt). A slow answer widens the bounds, so a loaded machine
  never takes its own delay for skew;
* while the offset is at least ``MIN_SKEW_S``, requests are signed with the corrected time: the
  ``choose-signer`` event picks ``s3v4-clock-corrected``, the stock S3 SigV4 signer with its signing time
  moved by the offset (registered in ``botocore.auth.AUTH_TYPE_MAPS``, botocore's table of signers);
* a request the endpoint refused (403) with a ``Date`` that moved the offset is signed again at once
  with the new one, so the first request of a skewed machine succeeds too.

A machine within ``MIN_SKEW_S`` of the endpoint signs exactly as boto3 does, and its time is its own.
"""

from __future__ import annotations

import datetime
import logging
import time
from email.utils import parsedate_to_datetime

import botocore.auth
from botocore.auth import SIGV4_TIMESTAMP, S3SigV4Auth
from botocore.exceptions import NoCredentialsError
from botocore.handlers import set_operation_specific_signer

from ..contract.registry import describe_offset

logger = logging.getLogger(__name__)

#: Offsets smaller than this are taken as none: the ``Date`` header has one-second resolution, and a
#: machine on NTP should sign and judge time exactly as before.
MIN_SKEW_S = 2.0
#: The name the corrected signer is registered under in botocore's table of signers.
SIGNER_NAME = "s3v4-clock-corrected"
#: The request context key that says which offset a request was signed with.
_SIGNED_WITH = "burrow_clock_offset_s"
#: The request context key for when (this machine's clock) it was signed, just before it was sent.
_SIGNED_AT = "burrow_signed_at"


def date_seconds(date_header: str) -> float | None:
    """An HTTP ``Date`` header as Unix seconds, or ``None`` for one that is not an HTTP date."""
    try:
        sent = parsedate_to_datetime(date_header)
    except (TypeError, ValueError, IndexError):
        return None
    if sent.tzinfo is None:  # "-0000": UTC by RFC 5322
        sent = sent.replace(tzinfo=datetime.UTC)
    return sent.timestamp()


def offset_bounds(date_s: float, sent_at: float, received_at: float) -> tuple[float, float]:
    """What one exchange says of the endpoint's clock minus this machine's: the endpoint stamped ``Date``
    (truncated to the second) between this machine's ``sent_at`` and ``received_at``, so the offset lies
    in (``date_s - received_at``, ``date_s + 1 - sent_at``). A slow answer widens the bounds; it never moves
    them off the truth."""
    return date_s - received_at, date_s + 1 - sent_at


def next_offset(current: float, low: float, high: float) -> float:
    """The offset to use after an exchange that bounds it to (``low``, ``high``): the current one while it
    fits; else none if none fits, else the middle of the bounds (none below ``MIN_SKEW_S``)."""
    if low <= current <= high:
        return current
    if low <= 0.0 <= high:
        return 0.0
    middle = (low + high) / 2
    return middle if abs(middle) >= MIN_SKEW_S else 0.0


class EndpointClock:
    """The time by an S3 endpoint's clock: this machine's, moved by the offset its responses showed.

    Attributes:
        offset_s: The endpoint's clock minus this machine's (seconds); 0 while the endpoint's answers fit
            this machine's clock (within the ``Date`` header's second and the time the answer took).
    """

    def __init__(self) -> None:
        self.offset_s = 0.0
        self._last_date: tuple[str, float | None] = ("", None)

    def now(self) -> float:
        """Unix seconds by the endpoint's clock."""
        return time.time() + self.offset_s

    def observe(self, date_header: str | None, sent_at: float, received_at: float) -> None:
        """Update the offset from a response's ``Date`` header (parsed once per distinct header)."""
        if not date_header:
            return
        if date_header != self._last_date[0]:
            self._last_date = (date_header, date_seconds(date_header))
        date_s = self._last_date[1]
        if date_s is None:
            return
        current = self.offset_s
        offset = next_offset(current, *offset_bounds(date_s, sent_at, received_at))
        if offset == current:
            return
        if (offset == 0.0) != (current == 0.0) or abs(offset - current) >= MIN_SKEW_S:
            logger.warning(
                "This machine's clock is %s the S3 endpoint's (its Date header): requests are signed and "
                "job expiry judged by the endpoint's time.",
                describe_offset(offset),
            )
        self.offset_s = offset

    def attach(self, client) -> None:
        """Make a boto3 S3 client learn the offset from its responses and sign with it."""
        client.meta.events.register_first("needs-retry.s3", self._on_response)
        client.meta.events.register("choose-signer.s3", self._choose_signer)

    def _on_response(self, response=None, attempts: int = 1, request_dict=None, **_) -> int | None:
        if response is None:  # no answer (connection error): botocore's own retries decide
            return None
        http, received_at = response[0], time.time()
        context = (request_dict or {}).get("context", {})
        self.observe(http.headers.get("Date"), context.get(_SIGNED_AT, received_at), received_at)
        signed_with = context.get(_SIGNED_WITH, 0.0)
        if http.status_code == 403 and abs(self.offset_s - signed_with) >= MIN_SKEW_S and attempts < 3:
            return 0  # refused, and the clock it was signed by was off: sign again now, with the new offset
        return None

    def _choose_signer(self, signature_version=None, context=None, signing_name=None, **kwargs) -> str | None:
        offset = self.offset_s
        if context is not None:
            context[_SIGNED_WITH], context[_SIGNED_AT] = offset, time.time()  # (signed, then sent at once)
        if not offset or signature_version not in ("v4", "s3v4"):  # (presigning adds a suffix: left alone)
            return None  # botocore's own choice, and its stock signer
        # This handler (on choose-signer.s3) runs before botocore's generic one: ask that one, with its side
        # effects on the context (unsigned payloads), and swap its S3 signer for the corrected one.
        chosen = set_operation_specific_signer(context=context, signing_name=signing_name, **kwargs)
        chosen = chosen or signature_version
        return SIGNER_NAME if chosen == "s3v4" else chosen


class ClockCorrectedS3SigV4Auth(S3SigV4Auth):
    """botocore's S3 SigV4 signer, signing with the time of the offset the request was chosen for.

    ``SigV4Auth.add_auth`` reads the clock itself, so its steps are repeated here with the corrected time
    (they are the same calls, in the same order)."""

    def add_auth(self, request) -> None:
        if self.credentials is None:
            raise NoCredentialsError()
        offset = request.context.get(_SIGNED_WITH, 0.0)
        signed_at = datetime.datetime.fromtimestamp(time.time() + offset, datetime.UTC)
        request.context["timestamp"] = signed_at.strftime(SIGV4_TIMESTAMP)
        self._modify_request_before_signing(request)
        canonical_request = self.canonical_request(request)
        string_to_sign = self.string_to_sign(request, canonical_request)
        signature = self.signature(string_to_sign, request)
        self._inject_signature_to_request(request, signature)


botocore.auth.AUTH_TYPE_MAPS.setdefault(SIGNER_NAME, ClockCorrectedS3SigV4Auth)
