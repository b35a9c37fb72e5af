"""The MIME notify writes for SMTP: 7-bit, CRLF, one line per header, and it parses back to what was given."""

from __future__ import annotations

from email import message_from_bytes, policy

from services.notify.email import mime_message

HEADERS = [("From", "notices@steward.test"), ("To", "lead@example.com"), ("Message-ID", "<ref@steward.test>")]


def parse(raw: bytes):  # type: ignore[no-untyped-def]
    return message_from_bytes(raw, policy=policy.default)


def body(part) -> str:  # type: ignore[no-untyped-def]
    return str(part.get_content()).replace("\r\n", "\n")


def test_text_and_html_in_any_script_come_back_unchanged() -> None:
    text = "नमस्ते,\n= signs, trailing space \n.a leading dot\n" + "long " * 60 + "\nend"
    html = "<p>सूचना & <b>notice</b></p>\n" * 5
    raw = mime_message([*HEADERS, ("Subject", "सुरक्षा सूचना: breach notice")], text, html)
    raw.decode("ascii")  # 7-bit: nothing for a relay to re-encode under a DKIM signature
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    assert b"\n" not in raw.replace(b"\r\n", b"")
    mail = parse(raw)
    assert mail.defects == [] and all(part.defects == [] for part in mail.walk())
    assert mail["Subject"] == "सुरक्षा सूचना: breach notice"
    assert mail.get_content_type() == "multipart/alternative"
    assert body(mail.get_body(("plain",))) == text
    assert body(mail.get_body(("html",))) == html


def test_text_only_is_a_single_part() -> None:
    mail = parse(mime_message([*HEADERS, ("Subject", "Hello")], "plain body"))
    assert mail.get_content_type() == "text/plain"
    assert body(mail).rstrip("\n") == "plain body"
    assert mail["Message-ID"] == "<ref@steward.test>"


def test_a_long_ascii_subject_is_folded_and_parses_back() -> None:
    subject = "Notice about a change to the processing of your data " * 3
    raw = mime_message([*HEADERS, ("Subject", subject)], "body")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    assert parse(raw)["Subject"] == subject.strip()


def test_a_value_with_line_breaks_cannot_add_a_header() -> None:
    raw = mime_message([*HEADERS, ("Subject", "Hello\r\nBcc: victim@example.com\nX-Evil: 1")], "body")
    mail = parse(raw)
    assert mail["Bcc"] is None and mail["X-Evil"] is None
    assert mail["Subject"] == "Hello Bcc: victim@example.com X-Evil: 1"


def test_no_body_can_hold_the_boundary() -> None:
    raw = mime_message([*HEADERS, ("Subject", "s")], "--=_ not a boundary\n--\n", "<p>--=_</p>")
    # Boundaries start with "=_", which quoted-printable bodies cannot contain ("=" is written "=3D").
    holding = [line for line in raw.split(b"\r\n") if b"=_" in line]
    assert holding and all(line.startswith((b"--=_", b' boundary="=_')) for line in holding)
    mail = parse(raw)
    assert body(mail.get_body(("plain",))) == "--=_ not a boundary\n--\n"
    assert body(mail.get_body(("html",))) == "<p>--=_</p>"
