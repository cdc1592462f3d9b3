"""Webhooks: register a URL for an owner's job and study endings; deliveries are queued in
SQL in the transaction that ends the job or study, then signed and sent (with retries for a
day) by the workers' webhook thread (workers/webhook_sender.py), so they never block or fail
a job."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import httpx
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.errors import InvalidInput, WebhookNotFound, problem
from app.db import transaction
from app.models import Job, Webhook, WebhookDelivery, utcnow
from app.schemas.webhooks import EVENTS

SIGNATURE_HEADER = "X-Trainery-Signature"
TIMESTAMP_HEADER = "X-Trainery-Timestamp"
RETRY_FOR = timedelta(days=1)
MAX_BACKOFF_S = 3600.0
SEND_TIMEOUT_S = 5.0
# A delivery being sent is leased for this long, so two workers never send it at once.
LEASE_S = 60.0
MAX_WEBHOOKS_PER_OWNER = 100


@dataclass(frozen=True)
class Sent:
    delivery_id: int
    ok: bool
    status_code: int | None
    error: str | None


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over "<timestamp>.<body>" (the timestamp guards replay)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def _refused_address(host: str) -> str | None:
    """Why host may not be a target (loopback, link-local, private...), or None."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError) as exc:  # UnicodeError: not a name IDNA can encode
        return f"host {host!r} does not resolve ({exc})"
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
            if getattr(addr, f"is_{kind}"):
                return f"{host} resolves to a {kind.replace('_', '-')} address ({addr})"
    return None


def check_url(url: str, allow_private: bool) -> None:
    """A 422 for a URL that is not http(s) or points into private networks (unless allowed)."""
    try:
        parsed = urlparse(url)
        host, _ = parsed.hostname, parsed.port  # .port raises on a port out of range
    except ValueError:  # e.g. "Invalid IPv6 URL": a stray bracket in the host
        host = None
    if host is None or parsed.scheme not in ("http", "https"):
        raise InvalidInput([problem(("url",), "must be an http:// or https:// URL")])
    if not allow_private:
        why = _refused_address(host)
        if why is not None:
            raise InvalidInput([problem(("url",), f"{why}; targets on loopback, link-local and "
                                        "private networks are refused "
                                        "(TRAINERY_WEBHOOK_ALLOW_PRIVATE)")])


def create(session: Session, owner: str, url: str, events: Sequence[str],
           allow_private: bool) -> Webhook:
    """Register a webhook; its secret is shown once, in the answer to this call."""
    check_url(url, allow_private)
    bad = [e for e in events if e not in EVENTS]
    if bad or not events:
        raise InvalidInput([problem(("events",), f"choose from {', '.join(EVENTS)}"
                                   + (f"; unknown: {', '.join(bad)}" if bad else ""))])
    count = len(session.scalars(select(Webhook.id).where(Webhook.owner == owner)).all())
    if count >= MAX_WEBHOOKS_PER_OWNER:
        raise InvalidInput([problem(("url",), f"an owner may have at most "
                                            f"{MAX_WEBHOOKS_PER_OWNER} webhooks")])
    hook = Webhook(id=f"wh_{uuid.uuid4().hex[:20]}", owner=owner, url=url,
                   events=sorted(set(events)), secret=f"whsec_{secrets.token_urlsafe(32)}")
    session.add(hook)
    session.flush()
    return hook


def get(session: Session, webhook_id: str, owner: str) -> Webhook:
    hook = session.get(Webhook, webhook_id)
    if hook is None or hook.owner != owner:
        raise WebhookNotFound(f"no webhook with id {webhook_id!r}")
    return hook


def list_for(session: Session, owner: str) -> list[Webhook]:
    return list(session.scalars(select(Webhook).where(Webhook.owner == owner)
                                .order_by(Webhook.created_at)))


def remove(session: Session, webhook_id: str, owner: str) -> None:
    """Delete a webhook and its deliveries."""
    hook = get(session, webhook_id, owner)
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id))
    session.delete(hook)


def deliveries(session: Session, webhook_id: str, owner: str,
               limit: int = 100) -> list[WebhookDelivery]:
    """The newest deliveries of a webhook, newest first."""
    get(session, webhook_id, owner)
    return list(session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
        .order_by(WebhookDelivery.id.desc()).limit(limit)))


def _queue(session: Session, owner: str, wanted: list[str], body: dict[str, Any]) -> None:
    """Queue one delivery to each of the owner's webhooks that wants one of `wanted` (the
    first it wants names the event), in the caller's transaction."""
    for hook in session.scalars(select(Webhook).where(Webhook.owner == owner)):
        event = next((e for e in wanted if e in hook.events), None)
        if event is None:
            continue
        payload = {"event": event, **body, "sent_for": utcnow().isoformat()}
        session.execute(insert(WebhookDelivery).values(
            webhook_id=hook.id, event=event, payload=payload, status="pending", attempts=0,
            next_attempt_at=utcnow(), created_at=utcnow()))


def job_ended(session: Session, job_id: str, status: str) -> None:
    """Queue the deliveries a job's end causes, in the transaction that ends it."""
    job = session.get(Job, job_id)
    if job is None:
        return
    _queue(session, job.owner, [f"job.{status}", "job.finished"], {"job": {
        "id": job.id, "name": job.name, "framework": job.framework, "status": status,
        "attempt": job.attempt, "error_type": job.error_type, "metrics": job.metrics,
        "best": job.best}})


def study_ended(session: Session, owner: str, study: dict[str, Any]) -> None:
    """Queue the `study.finished` deliveries, in the transaction that ends the study; `study`
    is what the payload says of it (id, state, end_reason, trial counts, best trial)."""
    _queue(session, owner, ["study.finished"], {"study": study})


def backoff_s(attempts: int, base_s: float) -> float:
    """Seconds before the next try after `attempts` failures: doubling, capped at an hour."""
    return float(min(MAX_BACKOFF_S, base_s * 2 ** max(0, attempts - 1)))


def _lease_due(factory: sessionmaker[Session], limit: int) -> list[tuple[int, str, str, Any]]:
    """Claim up to limit due deliveries (compare-and-set on next_attempt_at)."""
    now = utcnow()
    with factory() as session:
        due = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.next_attempt_at)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at).limit(limit)).all()
    leased = []
    for delivery_id, at in due:
        with transaction(factory) as session:
            moved = session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.next_attempt_at == at)
                .values(next_attempt_at=now + timedelta(seconds=LEASE_S))).rowcount  # type: ignore[attr-defined]
            if moved != 1:
                continue  # another worker took it
            row = session.execute(
                select(WebhookDelivery.event, WebhookDelivery.payload, Webhook.url,
                       Webhook.secret).join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                .where(WebhookDelivery.id == delivery_id)).one()
        leased.append((delivery_id, row.url, row.secret, (row.event, row.payload)))
    return leased


def send_due(factory: sessionmaker[Session], client: httpx.Client, retry_base_s: float,
             allow_private: bool = False, limit: int = 20) -> list[Sent]:
    """Send the deliveries that are due, record each outcome; what was sent."""
    results = []
    for delivery_id, url, secret, (event, payload) in _lease_due(factory, limit):
        # Checked again at each send: a name may resolve elsewhere now than at registration.
        host = urlparse(url).hostname or ""
        refused = None if allow_private else _refused_address(host)
        if refused is not None:
            _record(factory, delivery_id, None, f"refused: {refused}", retry_base_s)
            results.append(Sent(delivery_id, False, None, refused))
            continue
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        ts = int(time.time())
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(ts),
                   SIGNATURE_HEADER: sign(secret, ts, body), "X-Trainery-Event": event,
                   "X-Trainery-Delivery": str(delivery_id)}
        code: int | None = None
        error: str | None = None
        try:
            code = client.post(url, content=body, headers=headers,
                               timeout=SEND_TIMEOUT_S).status_code
            if not 200 <= code < 300:
                error = f"HTTP {code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        _record(factory, delivery_id, code, error, retry_base_s)
        results.append(Sent(delivery_id, error is None, code, error))
    return results


def _record(factory: sessionmaker[Session], delivery_id: int, code: int | None,
            error: str | None, retry_base_s: float) -> None:
    now = utcnow()
    with transaction(factory) as session:
        row = session.get_one(WebhookDelivery, delivery_id)
        row.attempts += 1
        row.last_status_code, row.last_error = code, error
        if error is None:
            row.status, row.delivered_at = "delivered", now
            return
        retry_at: datetime = now + timedelta(seconds=backoff_s(row.attempts, retry_base_s))
        if retry_at - row.created_at > RETRY_FOR:
            row.status = "failed"
        row.next_attempt_at = retry_at
