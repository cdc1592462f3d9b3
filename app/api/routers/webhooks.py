"""/v1/webhooks: register, list, delete, and see the deliveries."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import OwnerDep, SessionDep, SettingsDep
from app.api.errors import (
    BODY_ERRORS,
    COMMON_ERRORS,
    NOT_FOUND,
)
from app.models import Webhook
from app.schemas.webhooks import DeliveryPublic, WebhookCreate, WebhookPublic
from app.services import webhooks as webhook_service

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=COMMON_ERRORS)


def _public(hook: Webhook, *, with_secret: bool = False) -> WebhookPublic:
    return WebhookPublic(id=hook.id, url=hook.url, events=hook.events, created_at=hook.created_at,
                         secret=hook.secret if with_secret else None)


@router.post("", status_code=201, response_model=WebhookPublic, responses=BODY_ERRORS)
def create_webhook(body: WebhookCreate, session: SessionDep, owner: OwnerDep,
                   settings: SettingsDep) -> WebhookPublic:
    """Register a URL for the owner's job endings; the answer holds its signing secret."""
    hook = webhook_service.create(session, owner, body.url, body.events,
                                  settings.webhook_allow_private)
    return _public(hook, with_secret=True)


@router.get("", response_model=dict[str, list[WebhookPublic]])
def list_webhooks(session: SessionDep, owner: OwnerDep) -> dict[str, list[WebhookPublic]]:
    """The owner's webhooks (secrets are not shown again)."""
    return {"data": [_public(h) for h in webhook_service.list_for(session, owner)]}


@router.delete("/{webhook_id}", status_code=204, responses=NOT_FOUND)
def delete_webhook(webhook_id: str, session: SessionDep, owner: OwnerDep) -> Response:
    """Stop deliveries to a URL and forget them."""
    webhook_service.remove(session, webhook_id, owner)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=dict[str, list[DeliveryPublic]],
            responses=NOT_FOUND)
def list_deliveries(webhook_id: str, session: SessionDep,
                    owner: OwnerDep) -> dict[str, list[DeliveryPublic]]:
    """The newest 100 deliveries with their last status."""
    rows = webhook_service.deliveries(session, webhook_id, owner)
    return {"data": [DeliveryPublic.model_validate(r, from_attributes=True) for r in rows]}
