//! `POST /api/broadcast`: the publish API for backends.
//!
//! # Contract
//! * Requires `Authorization: Bearer <api_key>` (compared in constant time);
//!   401 otherwise.
//! * JSON body `{"topic": .., "event": .., "payload": <any JSON, default {}>}`,
//!   or any other content type as a binary payload with `topic` and `event`
//!   in the query string.
//! * Bodies over `max_api_body_bytes` get 413; malformed requests get 400
//!   with `{"error": ...}`. A success answers 200 with what the fan-out did.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use subtle::ConstantTimeEq;

use crate::app::App;
use crate::metrics;
use crate::protocol::{Payload, MAX_META_LEN};
use crate::pubsub::Origin;

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, result: &'static str, msg: &str) -> Response<Full<Bytes>> {
    metrics::api_request(result);
    json(status, serde_json::json!({ "error": msg }))
}

fn authorized(app: &App, req: &Request<Incoming>) -> bool {
    let Some(value) = req.headers().get(http::header::AUTHORIZATION) else {
        return false;
    };
    let Some(given) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
        return false;
    };
    bool::from(given.trim().as_bytes().ct_eq(app.api_key.as_bytes()))
}

fn valid_meta(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_META_LEN
}

/// Handle `POST /api/broadcast`.
pub async fn broadcast(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "bad_method", "use POST");
    }
    if !authorized(app, &req) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer api key",
        );
    }
    let is_json = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("application/json"));
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let body = match Limited::new(req.into_body(), app.config.max_api_body_bytes)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "body over max_api_body_bytes",
            )
        }
        Err(_) => return error(StatusCode::BAD_REQUEST, "bad_body", "could not read body"),
    };
    let (topic, event, payload) = if is_json {
        #[derive(serde::Deserialize)]
        struct Body {
            topic: String,
            event: String,
            payload: Option<Box<serde_json::value::RawValue>>,
        }
        let parsed: Body = match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_json",
                    &format!("invalid JSON body: {e}"),
                )
            }
        };
        let payload = match parsed.payload {
            Some(raw) => Payload::Json(Bytes::from(raw.get().to_owned())),
            None => Payload::empty(),
        };
        (parsed.topic, parsed.event, payload)
    } else {
        let get = |k: &str| {
            query
                .iter()
                .rev()
                .find(|(q, _)| q == k)
                .map(|(_, v)| v.clone())
        };
        match (get("topic"), get("event")) {
            (Some(t), Some(e)) => (t, e, Payload::Binary(body)),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    "binary bodies need ?topic=..&event=.. in the query string",
                )
            }
        }
    };
    if !valid_meta(&topic) || !valid_meta(&event) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_meta",
            "topic and event must be 1..=255 bytes",
        );
    }
    let d = app.pubsub.broadcast(&topic, &event, &payload, Origin::Api);
    metrics::api_request("ok");
    json(
        StatusCode::OK,
        serde_json::json!({ "ok": true, "queued": d.queued, "refused": d.refused, "unencodable": d.unencodable }),
    )
}
