import pytest

from streamrec.stream.decode import decode
from streamrec.stream.rejection import InvalidEvent


def test_decodes_a_json_object() -> None:
    assert decode(b'{"user_id": "u1", "n": 2}', 1024) == {"user_id": "u1", "n": 2}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty_payload"),
        (b"", "empty_payload"),
        (b"{not json", "not_json"),
        (b"\xff\xfe\x00", "not_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"a string"', "not_an_object"),
        (b"42", "not_an_object"),
    ],
)
def test_rejects_what_is_not_a_json_object(value: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode(value, 1024)
    assert caught.value.reason == reason


def test_rejects_oversized_payload_before_parsing() -> None:
    payload = b'{"pad": "' + b"x" * 2000 + b'"}'
    with pytest.raises(InvalidEvent) as caught:
        decode(payload, 1024)
    assert caught.value.reason == "payload_too_large"
    assert "2011 bytes" in caught.value.detail
    assert decode(payload, 4096)["pad"] == "x" * 2000
