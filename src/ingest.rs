//! `POST /webhooks/{provider_id}`: verify, normalize, persist, acknowledge.
//!
//! The delivery is stored (deduplicated on its delivery id) before the 202 is
//! sent, and the dispatcher does the rest; the response never waits on git or
//! terraform. A bad signature is 401 and stores nothing; a body gantry cannot
//! parse is 400; one over the size limit is 413 (enforced by the router).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::settings::Settings;
use crate::store::{EventsStored, NewEvent, Store};
use crate::vcs::{Incoming, WebhookError};

/// GitHub's own cap on webhook payloads.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

pub async fn webhook(
    State(settings): State<Settings>,
    State(store): State<Store>,
    State(events_stored): State<EventsStored>,
    Path(provider_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(provider) = settings.providers().get(&provider_id) else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no provider `{provider_id}`")}),
        );
    };
    let incoming = match provider.parse_webhook(&headers, &body) {
        Ok(i) => i,
        Err(WebhookError::Unauthorized(reason)) => {
            tracing::warn!(provider.id = %provider_id, reason = %reason, "webhook rejected: {reason}");
            return reply(
                StatusCode::UNAUTHORIZED,
                json!({"error": "invalid signature"}),
            );
        }
        Err(WebhookError::BadRequest(reason)) => {
            tracing::warn!(provider.id = %provider_id, reason = %reason, "webhook rejected: {reason}");
            return reply(StatusCode::BAD_REQUEST, json!({"error": reason}));
        }
    };
    match incoming {
        Incoming::Ignored { event_type, reason } => {
            tracing::info!(provider.id = %provider_id, event = %event_type, "webhook ignored: {reason}");
            reply(
                StatusCode::ACCEPTED,
                json!({"status": "ignored", "reason": reason}),
            )
        }
        Incoming::Event {
            delivery_id,
            event_type,
            action,
            event,
            actionable,
        } => {
            let new = NewEvent {
                provider_id: provider_id.clone(),
                delivery_id: delivery_id.clone(),
                event_type: event_type.clone(),
                action,
                repo: event.repo().map(str::to_string),
                body: serde_json::to_string(&event).expect("events serialize"),
                state: if actionable { "pending" } else { "recorded" },
                detail: None,
            };
            match store.insert_event(&new).await {
                Ok(Some(id)) => {
                    tracing::info!(provider.id = %provider_id, event.id = id, delivery.id = %delivery_id, event = %event_type, "webhook stored as event {id}");
                    if actionable {
                        events_stored.notify();
                    }
                    reply(
                        StatusCode::ACCEPTED,
                        json!({"status": if actionable {"queued"} else {"recorded"}, "event_id": id}),
                    )
                }
                Ok(None) => {
                    tracing::info!(provider.id = %provider_id, delivery.id = %delivery_id, "duplicate delivery {delivery_id}");
                    reply(StatusCode::ACCEPTED, json!({"status": "duplicate"}))
                }
                Err(e) => {
                    // Not acknowledged, so the provider will deliver it again.
                    tracing::error!(provider.id = %provider_id, error = %e, "storing a webhook failed");
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"error": "could not store the event; retry"}),
                    )
                }
            }
        }
    }
}
