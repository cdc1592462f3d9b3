"""The worker's webhook thread: sends due deliveries, apart from training and maintenance,
so a slow or dead receiver never delays a job, a heartbeat or a reap."""

from __future__ import annotations

import logging
import threading

import httpx
from sqlalchemy.orm import Session, sessionmaker

from app.services import webhooks
from app.settings import Settings

log = logging.getLogger(__name__)


class WebhookSender:
    """Polls SQL for due deliveries every maintenance interval (leases make workers share)."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings) -> None:
        self.factory, self.settings = factory, settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        with httpx.Client(follow_redirects=False) as client:
            while not self._stop.wait(self.settings.maintenance_interval_s):
                try:
                    for sent in webhooks.send_due(self.factory, client,
                                                  self.settings.webhook_retry_base_s,
                                                  self.settings.webhook_allow_private):
                        log.info("webhook delivery", extra={
                            "delivery_id": sent.delivery_id, "ok": sent.ok,
                            "status_code": sent.status_code, "error": sent.error})
                except Exception:  # noqa: BLE001 - the thread must outlive a bad tick
                    log.exception("webhook deliveries failed this round")
