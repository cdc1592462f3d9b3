"""Webhook targets and signatures (no processes)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from app.core.errors import InvalidInput
from app.services.webhooks import backoff_s, check_url, sign


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/hook", "http://localhost/hook", "http://[::1]/hook",
    "http://169.254.169.254/latest/meta-data", "http://10.1.2.3/", "https://192.168.0.10/x",
    "http://172.16.0.1/", "http://0.0.0.0/"])
def test_private_targets_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_url(url, allow_private=False)
    assert err.value.detail[0]["path"] == "url"
    assert "TRAINERY_WEBHOOK_ALLOW_PRIVATE" in err.value.detail[0]["message"]
    check_url(url, allow_private=True)


@pytest.mark.parametrize("url", ["http://a]b/", "http://[::1/", "http://host:99999/"])
def test_a_url_urllib_cannot_split_is_refused_not_a_500(url: str) -> None:
    """schemathesis found it: urlparse raises ValueError ("Invalid IPv6 URL") on these."""
    with pytest.raises(InvalidInput) as err:
        check_url(url, allow_private=True)
    assert err.value.detail[0]["path"] == "url"


def test_a_host_idna_cannot_encode_is_refused_not_a_500() -> None:
    """schemathesis found it: getaddrinfo raises UnicodeError, not OSError, for such a name."""
    with pytest.raises(InvalidInput) as err:
        check_url("http://\x98host/", allow_private=False)
    assert err.value.detail[0]["path"] == "url"
    assert "does not resolve" in err.value.detail[0]["message"]


@pytest.mark.parametrize("url", ["ftp://example.com/x", "not a url", "http:///nohost"])
def test_only_http_urls(url: str) -> None:
    with pytest.raises(InvalidInput):
        check_url(url, allow_private=True)


def test_public_address_is_accepted() -> None:
    check_url("https://8.8.8.8/hook", allow_private=False)


def test_signature_is_hmac_sha256_of_timestamp_and_body() -> None:
    body = b'{"event":"job.succeeded"}'
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("s3cret", 1700000000, body) == f"sha256={expected}"
    assert sign("s3cret", 1700000001, body) != sign("s3cret", 1700000000, body)


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_s(n, 10) for n in (1, 2, 3)] == [10, 20, 40]
    assert backoff_s(30, 10) == 3600
