"""Errors that carry an HTTP status and, where one applies, a DICOM failure reason.

Every error raised while handling a request is a :class:`DicomWebError`; one function
(:func:`dicomweb_core.web.responses.error_response`) turns it into a response, so handlers never
build error responses themselves.
"""

from __future__ import annotations

from http import HTTPStatus


class DicomWebError(Exception):
    """Base class: an error with the HTTP status a DICOMweb origin server answers."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    default_message = "The server could not process the request."

    def __init__(
        self, message: str | None = None, *, failure_reason: int | None = None, retry_after: int | None = None
    ) -> None:
        self.message = message or self.default_message
        self.failure_reason = failure_reason
        self.retry_after = retry_after  # seconds, sent as Retry-After when the condition is temporary
        super().__init__(self.message)


class BadRequest(DicomWebError):
    status = HTTPStatus.BAD_REQUEST
    default_message = "The request is malformed."


class InvalidUID(BadRequest):
    """A UID in the path or in a dataset breaks PS3.5 §9."""

    default_message = "A UID must be 1 to 64 characters of digits and dots, with no leading zeros."


class NotFound(DicomWebError):
    status = HTTPStatus.NOT_FOUND
    default_message = "No such resource."


class Gone(DicomWebError):
    status = HTTPStatus.GONE
    default_message = "The resource was deleted."


class NotAcceptable(DicomWebError):
    status = HTTPStatus.NOT_ACCEPTABLE
    default_message = "None of the acceptable media types can be produced."


class Conflict(DicomWebError):
    status = HTTPStatus.CONFLICT
    default_message = "The request conflicts with the stored data."


class PayloadTooLarge(DicomWebError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    default_message = "The request is too large."


class ServiceUnavailable(DicomWebError):
    """A temporary condition: the client should retry after ``retry_after`` seconds."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class UnsupportedMediaType(DicomWebError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    default_message = "The Content-Type is not supported."


class MultipartError(BadRequest):
    """A multipart/related body that cannot be parsed (PS3.18 §8.6.1.2)."""

    default_message = "The multipart/related body is malformed."


class TooManyParts(PayloadTooLarge):
    default_message = "The multipart/related body has too many parts."
