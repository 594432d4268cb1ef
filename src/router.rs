//! Which topic goes to which channel kind, and who may join it.
//!
//! # Contract
//! * Routes are tried in configuration order; the first whose pattern matches
//!   the topic wins. A pattern is an exact topic (`lobby`) or a prefix ending
//!   with `*` (`room:*`).
//! * A route names a channel kind (looked up in the [`crate::channel::Registry`]
//!   when the server starts: an unknown kind is a configuration error) and a
//!   [`JoinRule`].
//! * No business logic here: the session asks [`Router::route`] and
//!   [`JoinRule::allows`], and acts on the answer.

use std::sync::Arc;

use crate::channel::{ChannelKind, Registry};

/// Who may join a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRule {
    /// Any connected socket, with or without a user.
    Anyone,
    /// Sockets that connected with a valid token.
    Authenticated,
    /// Sockets whose user id equals the topic's last `:`-separated segment.
    Owner,
    /// No one (a route that reserves a namespace).
    Nobody,
}

impl JoinRule {
    fn parse(s: &str) -> Result<JoinRule, String> {
        match s {
            "anyone" => Ok(JoinRule::Anyone),
            "authenticated" => Ok(JoinRule::Authenticated),
            "owner" => Ok(JoinRule::Owner),
            "nobody" => Ok(JoinRule::Nobody),
            other => Err(format!(
                "unknown join rule `{other}` (expected anyone, authenticated, owner or nobody)"
            )),
        }
    }

    /// Whether a socket with `user` (None = anonymous) may join `topic`.
    pub fn allows(self, user: Option<&str>, topic: &str) -> bool {
        match self {
            JoinRule::Anyone => true,
            JoinRule::Authenticated => user.is_some(),
            JoinRule::Owner => match user {
                Some(id) => topic.rsplit(':').next() == Some(id),
                None => false,
            },
            JoinRule::Nobody => false,
        }
    }
}

/// A topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// Exactly this topic.
    Exact(String),
    /// Any topic starting with this prefix.
    Prefix(String),
}

impl Pattern {
    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Exact(t) => topic == t,
            Pattern::Prefix(p) => topic.starts_with(p.as_str()),
        }
    }
}

/// One configured route: `PATTERN=KIND/RULE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Which topics.
    pub pattern: Pattern,
    /// The channel kind's name.
    pub kind: String,
    /// Who may join.
    pub rule: JoinRule,
}

impl RouteSpec {
    /// Parse `room:*=room/authenticated`.
    pub fn parse(s: &str) -> Result<RouteSpec, String> {
        let (pattern, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("route `{s}` is not PATTERN=KIND/RULE"))?;
        let (kind, rule) = rest
            .split_once('/')
            .ok_or_else(|| format!("route `{s}` is not PATTERN=KIND/RULE"))?;
        let pattern = pattern.trim();
        if pattern.is_empty() || kind.trim().is_empty() {
            return Err(format!("route `{s}` has an empty pattern or kind"));
        }
        let pattern = match pattern.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => {
                return Err(format!("route `{s}`: `*` is only allowed at the end"))
            }
            Some(prefix) => Pattern::Prefix(prefix.to_owned()),
            None if pattern.contains('*') => {
                return Err(format!("route `{s}`: `*` is only allowed at the end"))
            }
            None => Pattern::Exact(pattern.to_owned()),
        };
        Ok(RouteSpec {
            pattern,
            kind: kind.trim().to_owned(),
            rule: JoinRule::parse(rule.trim())?,
        })
    }
}

/// A resolved route.
#[derive(Clone)]
pub struct Route {
    /// The kind that serves the topic.
    pub kind: Arc<dyn ChannelKind>,
    /// The kind's name (for logs and metrics).
    pub kind_name: Arc<str>,
    /// Who may join.
    pub rule: JoinRule,
}

/// The topic router.
#[derive(Clone)]
pub struct Router {
    routes: Vec<(Pattern, Route)>,
}

impl Router {
    /// Resolve route specs against the registry of channel kinds.
    pub fn new(specs: &[RouteSpec], registry: &Registry) -> Result<Router, String> {
        let mut routes = Vec::with_capacity(specs.len());
        for spec in specs {
            let kind = registry.get(&spec.kind).ok_or_else(|| {
                format!(
                    "route for {:?} names unknown channel kind `{}` (known: {})",
                    spec.pattern,
                    spec.kind,
                    registry.names().join(", ")
                )
            })?;
            routes.push((
                spec.pattern.clone(),
                Route {
                    kind,
                    kind_name: Arc::from(spec.kind.as_str()),
                    rule: spec.rule,
                },
            ));
        }
        Ok(Router { routes })
    }

    /// The route for a topic, if any.
    pub fn route(&self, topic: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|(p, _)| p.matches(topic))
            .map(|(_, r)| r)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_routes() {
        let r = RouteSpec::parse("room:*=room/authenticated").unwrap();
        assert_eq!(r.pattern, Pattern::Prefix("room:".into()));
        assert_eq!(r.rule, JoinRule::Authenticated);
        let r = RouteSpec::parse("lobby=echo/anyone").unwrap();
        assert_eq!(r.pattern, Pattern::Exact("lobby".into()));
        assert!(RouteSpec::parse("room").is_err());
        assert!(RouteSpec::parse("ro*om=room/anyone").is_err());
        assert!(RouteSpec::parse("room:*=room/sometimes").is_err());
    }

    #[test]
    fn rules() {
        assert!(JoinRule::Anyone.allows(None, "x"));
        assert!(!JoinRule::Authenticated.allows(None, "x"));
        assert!(JoinRule::Authenticated.allows(Some("1"), "x"));
        assert!(JoinRule::Owner.allows(Some("42"), "user:42"));
        assert!(!JoinRule::Owner.allows(Some("42"), "user:43"));
        assert!(!JoinRule::Owner.allows(Some("42"), "user:142"));
        assert!(!JoinRule::Owner.allows(None, "user:42"));
        assert!(!JoinRule::Nobody.allows(Some("1"), "x"));
    }
}
