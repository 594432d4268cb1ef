//! Who may open a socket: vsn negotiation, origin check and token
//! verification for an upgrade request, decided before the 101.
//!
//! # Contract
//! * Pure over the request's query string and headers plus `now_ms`; returns
//!   the accepted [`ConnectInfo`] or a [`Reject`] with a bounded reason label.
//! * Token sources, first found wins: the `authToken` subprotocol
//!   (`base64url.bearer.phx.<base64>`, phoenix.js 1.8), then the `token` query
//!   parameter, then `userToken` (the seed's client). A repeated parameter
//!   keeps its last value, as Plug does.
//! * Every rejection becomes HTTP 403 with an empty body, as Phoenix does,
//!   except [`Reject::Draining`], which is 503 (try another node).

use std::sync::Arc;

use base64::Engine;
use http::HeaderMap;

use crate::app::App;
use crate::protocol::Format;
use crate::token::{self, TokenError};

/// An accepted connection.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    /// The negotiated serializer.
    pub format: Format,
    /// The user id from the token (None for anonymous sockets).
    pub user_id: Option<Arc<str>>,
    /// Whether the client offered the `phoenix` subprotocol (answer it).
    pub subprotocol_phoenix: bool,
}

/// Why a connection is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// `vsn` is not 1.0.x or 2.0.x.
    BadVsn,
    /// Origin not allowed.
    Origin,
    /// Token problems.
    Token(TokenError),
    /// The token is valid but carries no usable user id.
    NoUser,
    /// Shutting down.
    Draining,
}

impl Reject {
    /// Bounded metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Reject::BadVsn => "bad_vsn",
            Reject::Origin => "origin",
            Reject::Token(TokenError::Missing) => "token_missing",
            Reject::Token(TokenError::Invalid) => "token_invalid",
            Reject::Token(TokenError::Expired) => "token_expired",
            Reject::Token(TokenError::FromFuture) => "token_from_future",
            Reject::NoUser => "token_no_user",
            Reject::Draining => "draining",
        }
    }
}

/// The subprotocol prefix phoenix.js uses for `authToken`.
const BEARER_PREFIX: &str = "base64url.bearer.phx.";

/// Parsed `Sec-WebSocket-Protocol` offers.
fn subprotocols(headers: &HeaderMap) -> (bool, Option<String>) {
    let mut phoenix = false;
    let mut bearer = None;
    for value in headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',').map(str::trim) {
            if item == "phoenix" {
                phoenix = true;
            } else if let Some(b64) = item.strip_prefix(BEARER_PREFIX) {
                bearer = decode_bearer(b64);
            }
        }
    }
    (phoenix, bearer)
}

/// phoenix.js sends `btoa(token)` without padding; accept standard and URL-safe alphabets.
fn decode_bearer(b64: &str) -> Option<String> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = b64.trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Query parameters we look at (last occurrence wins).
#[derive(Debug, Default)]
struct Params {
    vsn: Option<String>,
    token: Option<String>,
    user_token: Option<String>,
}

fn params(query: Option<&str>) -> Params {
    let mut p = Params::default();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "vsn" => p.vsn = Some(v.into_owned()),
            "token" => p.token = Some(v.into_owned()),
            "userToken" => p.user_token = Some(v.into_owned()),
            _ => {}
        }
    }
    p
}

/// Decide whether this upgrade request may connect.
pub fn authorize(
    app: &App,
    query: Option<&str>,
    headers: &HeaderMap,
    now_ms: u64,
) -> Result<ConnectInfo, Reject> {
    if app.is_draining() {
        return Err(Reject::Draining);
    }
    let params = params(query);
    let format = Format::from_vsn(params.vsn.as_deref()).ok_or(Reject::BadVsn)?;
    let origin = headers
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if !app.config.check_origin.allows(origin) {
        return Err(Reject::Origin);
    }
    let (subprotocol_phoenix, bearer) = subprotocols(headers);
    let token = bearer
        .or(params.token)
        .or(params.user_token)
        .filter(|t| !t.is_empty());
    let user_id = match token {
        None if app.config.anonymous_sockets => None,
        None => return Err(Reject::Token(TokenError::Missing)),
        Some(t) => {
            let data = token::verify(&app.token_key, Some(&t), now_ms, &app.token_opts)
                .map_err(Reject::Token)?;
            Some(Arc::from(token::user_id(&data).ok_or(Reject::NoUser)?))
        }
    };
    Ok(ConnectInfo {
        format,
        user_id,
        subprotocol_phoenix,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn last_param_wins() {
        let p = params(Some("token=a&vsn=2.0.0&token=b&"));
        assert_eq!(p.token.as_deref(), Some("b"));
        assert_eq!(p.vsn.as_deref(), Some("2.0.0"));
    }

    #[test]
    fn bearer_subprotocol() {
        let mut h = HeaderMap::new();
        // btoa("tok_123") without padding
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            "phoenix, base64url.bearer.phx.dG9rXzEyMw".parse().unwrap(),
        );
        let (phoenix, bearer) = subprotocols(&h);
        assert!(phoenix);
        assert_eq!(bearer.as_deref(), Some("tok_123"));
    }

    #[test]
    fn url_safe_bearer() {
        // "??>" encodes to "Pz8+" (standard) / "Pz8-" (url-safe)
        assert_eq!(decode_bearer("Pz8-").as_deref(), Some("??>"));
        assert_eq!(decode_bearer("Pz8+").as_deref(), Some("??>"));
    }
}
