"""A small multipart/form-data parser: splits on the boundary, so large binary parts stay cheap."""

import email.message
import email.policy
from dataclasses import dataclass
from email.parser import BytesParser


class MultipartError(ValueError):
    pass


@dataclass(frozen=True)
class FormPart:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def is_form_data(content_type: str) -> bool:
    return parse_header(content_type).get_content_type() == "multipart/form-data"


def parse_form_data(content_type: str, body: bytes) -> dict[str, FormPart]:
    """Fields by name; when a name repeats, the first part wins."""
    boundary = parse_header(content_type).get_boundary()
    if not boundary:
        raise MultipartError("multipart/form-data without a boundary")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    # A leading CRLF makes the first delimiter look like every later one.
    sections = (b"\r\n" + body).split(delimiter)
    if len(sections) < 3 or not sections[-1].startswith(b"--"):
        raise MultipartError("multipart body is not closed by its boundary")
    parts: dict[str, FormPart] = {}
    for section in sections[1:-1]:
        part = parse_part(section)
        parts.setdefault(part.name, part)
    return parts


def parse_part(section: bytes) -> FormPart:
    head, separator, data = section.partition(b"\r\n\r\n")
    if not separator:
        raise MultipartError("multipart part without a header block")
    headers = BytesParser(policy=email.policy.HTTP).parsebytes(head.lstrip(b" \t\r\n") + b"\r\n\r\n")
    name = headers.get_param("name", header="content-disposition")
    if not isinstance(name, str) or not name:
        raise MultipartError("multipart part without a field name")
    content_type = headers.get("content-type")
    return FormPart(name, headers.get_filename(), str(content_type) if content_type else None, data)


def parse_header(content_type: str) -> email.message.Message:
    message = email.message.Message()
    message["content-type"] = content_type
    return message
