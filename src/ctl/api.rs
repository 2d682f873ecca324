//! The management API as `warren ctl` calls it: one blocking request at a time, and each
//! failure turned into one line that says what failed, the server's reason and what to do.

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use ureq::http::{self, Method, StatusCode};

use super::text::{quoted, shell, shown};

/// The largest answer read: an export of a very large broker fits, an endless stream does not.
const MAX_ANSWER: u64 = 1 << 30;

/// Why a command failed; each kind has its exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The command line asks for something impossible (exit 2, as clap's usage errors).
    Usage(String),
    /// The server refused (exit 1, or 77 for 401).
    Refused {
        /// The HTTP status.
        status: u16,
        /// What failed, the server's reason and a hint.
        message: String,
    },
    /// No management API answers at the URL (exit 69, EX_UNAVAILABLE).
    Unreachable(String),
    /// A file on this machine could not be read or written (exit 1).
    Local(String),
}

impl Failure {
    /// The process exit code for this failure.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Refused { status: 401, .. } => 77,
            Self::Refused { .. } | Self::Local(_) => 1,
            Self::Unreachable(_) => 69,
        }
    }

    /// The one line to print after `warren ctl: `.
    pub(crate) fn message(&self) -> &str {
        match self {
            Self::Usage(m) | Self::Unreachable(m) | Self::Local(m) => m,
            Self::Refused { message, .. } => message,
        }
    }
}

/// What a 404 (or a 400 saying `..._not_found`) is about, to tell the operator which name is
/// wrong and how to list the right ones.
#[derive(Debug)]
pub(crate) enum Subject<'a> {
    /// A user.
    User(&'a str),
    /// A vhost.
    Vhost(&'a str),
    /// An object of `kind` in a vhost, listed by `listing`; the vhost may be what is missing.
    InVhost {
        /// The vhost.
        vhost: &'a str,
        /// "queue", "policy".
        kind: &'static str,
        /// The object's name.
        name: &'a str,
        /// The command that lists such objects.
        listing: &'static str,
    },
    /// A user's permissions in a vhost; either may be what is missing.
    Permissions {
        /// The vhost.
        vhost: &'a str,
        /// The user.
        user: &'a str,
    },
    /// A client connection.
    Connection(&'a str),
}

/// An HTTP answer.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The status code.
    pub status: u16,
    /// The body, whole.
    pub body: Vec<u8>,
}

impl Answer {
    fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// RabbitMQ's `reason` of an error body as one line, or the status's name.
    fn reason(&self) -> String {
        let reason = serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v.get("reason").cloned());
        let text = match reason {
            Some(Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => StatusCode::from_u16(self.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .map_or_else(|| format!("HTTP {}", self.status), String::from),
        };
        // Validation reasons come as "headline\n\ndetail\n"; one line keeps both.
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        shown(&lines.join(": "))
    }
}

/// A client of one broker's management API.
pub(crate) struct Client {
    agent: ureq::Agent,
    /// `http://host:port` (and any path prefix), without `/api`.
    base: String,
    authorization: String,
    user: String,
    timeout: Duration,
}

impl Client {
    /// A client of the API at `url` (`http://host:port`, with or without `/api`), logging in
    /// as `user`.
    pub(crate) fn new(
        url: &str,
        user: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<Self, Failure> {
        let base = base_url(url)?;
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            // The API is an admin endpoint on a private network: sending its credentials
            // through a proxy picked up from the environment would be a surprise.
            .proxy(None)
            .user_agent(format!("warren-ctl/{}", env!("CARGO_PKG_VERSION")))
            .build();
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Ok(Self {
            agent: ureq::Agent::new_with_config(config),
            base,
            authorization: format!("Basic {credentials}"),
            user: user.to_owned(),
            timeout,
        })
    }

    /// Sends a request to `/api{path}` (`path` percent-encoded already); only a failure to
    /// reach the API is an error here.
    pub(crate) fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        reason: Option<&str>,
    ) -> Result<Answer, Failure> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}/api{path}", self.base))
            .header(http::header::AUTHORIZATION, &self.authorization)
            .header(http::header::ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(r) = reason {
            request = request.header("x-reason", r);
        }
        let request = request
            .body(body.unwrap_or_default())
            .map_err(|e| Failure::Usage(format!("cannot build the request for {path}: {e}")))?;
        let mut response = self.agent.run(request).map_err(|e| self.unreachable(&e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| self.unreachable(&e))?;
        Ok(Answer { status, body })
    }

    /// Sends a request and returns the body of a 2xx; anything else is a [`Failure`] saying
    /// that `doing` failed, why, and what to do (for a 404, about `subject`).
    pub(crate) fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        doing: &str,
        subject: Option<Subject<'_>>,
    ) -> Result<Vec<u8>, Failure> {
        let answer = self.send(method, path, body, None)?;
        self.check(answer, doing, subject)
    }

    /// The body of a 2xx answer, or the failure it means.
    pub(crate) fn check(
        &self,
        answer: Answer,
        doing: &str,
        subject: Option<Subject<'_>>,
    ) -> Result<Vec<u8>, Failure> {
        if answer.is_success() {
            return Ok(answer.body);
        }
        Err(self.refused(&answer, doing, subject))
    }

    /// GETs `path` and parses the JSON answer.
    pub(crate) fn get_json(
        &self,
        path: &str,
        doing: &str,
        subject: Option<Subject<'_>>,
    ) -> Result<Value, Failure> {
        let body = self.call(Method::GET, path, None, doing, subject)?;
        self.parse(&body)
    }

    /// Parses an answer that should be the API's JSON.
    fn parse(&self, body: &[u8]) -> Result<Value, Failure> {
        serde_json::from_slice(body).map_err(|e| {
            Failure::Unreachable(format!(
                "the answer from {} is not the management API's JSON ({e}); is that the management API's URL?",
                self.base
            ))
        })
    }

    /// Whether `path` exists (200) or not (404); anything else is a failure of `doing`.
    pub(crate) fn exists(&self, path: &str, doing: &str) -> Result<bool, Failure> {
        let answer = self.send(Method::GET, path, None, None)?;
        match answer.status {
            404 => Ok(false),
            _ => self.check(answer, doing, None).map(|_| true),
        }
    }

    fn refused(&self, answer: &Answer, doing: &str, subject: Option<Subject<'_>>) -> Failure {
        let reason = answer.reason();
        let not_found = answer.status == 404 || reason.ends_with("not_found");
        let hint = match (answer.status, subject) {
            (401, _) => Some(self.auth_hint(&reason)),
            (_, Some(s)) if not_found => Some(self.missing(s)),
            _ => None,
        };
        let mut message = format!("{doing}: {reason}");
        if let Some(h) = hint {
            message.push_str(&format!(" ({h})"));
        }
        Failure::Refused {
            status: answer.status,
            message,
        }
    }

    /// What to do about a 401, from RabbitMQ's reason.
    fn auth_hint(&self, reason: &str) -> String {
        let user = quoted(&self.user);
        let tag = |tag: &str| {
            format!(
                "user {user} needs the {tag} tag: an administrator can run `warren ctl set_user_tags {} {tag}`",
                shell(&self.user)
            )
        };
        match reason {
            "Not administrator user" => tag("administrator"),
            "Not monitor user" => tag("monitoring"),
            "Not policymaker user" => tag("policymaker"),
            "Not management user" => tag("management"),
            "Login failed" | "Unauthorized" => format!(
                "user {user} was refused: check --user and --password, or WARREN_USER and WARREN_PASSWORD; guest may log in from localhost only"
            ),
            _ => format!(
                "user {user} lacks permissions for this: see them with `warren ctl list_permissions -p VHOST`"
            ),
        }
    }

    /// Which name of `subject` is wrong, asking the API where that is ambiguous.
    fn missing(&self, subject: Subject<'_>) -> String {
        // Only a 404 says it is missing: a lookup the caller may not make says nothing.
        let vhost_missing = |v: &str| {
            matches!(
                self.exists(&format!("/vhosts/{}", segment(v)), ""),
                Ok(false)
            )
        };
        let user_missing = |u: &str| {
            matches!(
                self.exists(&format!("/users/{}", segment(u)), ""),
                Ok(false)
            )
        };
        match subject {
            Subject::User(u) => user_hint(u),
            Subject::Vhost(v) => vhost_hint(v),
            Subject::InVhost { vhost, .. } if vhost_missing(vhost) => vhost_hint(vhost),
            Subject::InVhost {
                vhost,
                kind,
                name,
                listing,
            } => format!(
                "{kind} {} does not exist in vhost {}: list them with `warren ctl {listing}{}`",
                quoted(name),
                quoted(vhost),
                vhost_flag(vhost)
            ),
            Subject::Permissions { user, .. } if user_missing(user) => user_hint(user),
            Subject::Permissions { vhost, .. } if vhost_missing(vhost) => vhost_hint(vhost),
            Subject::Permissions { vhost, user } => format!(
                "user {} has no permissions in vhost {}: see `warren ctl list_permissions{}`",
                quoted(user),
                quoted(vhost),
                vhost_flag(vhost)
            ),
            Subject::Connection(c) => format!(
                "connection {} is not open: list connections with `warren ctl list_connections`",
                quoted(c)
            ),
        }
    }

    fn unreachable(&self, e: &ureq::Error) -> Failure {
        if let ureq::Error::Protocol(_) = e {
            return Failure::Unreachable(format!(
                "cannot reach the management API at {}: the answer is not HTTP; is that the AMQP port? The API listens on management.listen, port 15672 by default",
                self.base
            ));
        }
        let cause = match e {
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                "connection refused".to_owned()
            }
            ureq::Error::Io(io) => io.to_string(),
            ureq::Error::HostNotFound => "host not found".to_owned(),
            ureq::Error::Timeout(_) => format!("no answer within {} s", self.timeout.as_secs()),
            other => other.to_string(),
        };
        Failure::Unreachable(format!(
            "cannot reach the management API at {}: {cause}; is warren running, and is management.listen set?",
            self.base
        ))
    }
}

fn user_hint(user: &str) -> String {
    format!(
        "user {} does not exist: list users with `warren ctl list_users`",
        quoted(user)
    )
}

fn vhost_hint(vhost: &str) -> String {
    format!(
        "vhost {} does not exist: list vhosts with `warren ctl list_vhosts`",
        quoted(vhost)
    )
}

/// ` -p VHOST` for a command line in a hint, or nothing for the default vhost.
fn vhost_flag(vhost: &str) -> String {
    if vhost == "/" {
        String::new()
    } else {
        format!(" -p {}", shell(vhost))
    }
}

/// The API's base URL from what the operator typed: `http://` added where no scheme is given,
/// a trailing `/` or `/api` dropped.
fn base_url(url: &str) -> Result<String, Failure> {
    let url = url.trim();
    let url = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| Failure::Usage(format!("invalid --url '{}': {e}", shown(&url))))?;
    if uri.scheme_str() != Some("http") {
        return Err(Failure::Usage(format!(
            "invalid --url '{}': warren ctl speaks plain http:// only (the management API has no TLS)",
            shown(&url)
        )));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(Failure::Usage(format!(
            "invalid --url '{}': no host",
            shown(&url)
        )));
    }
    let trimmed = url.trim_end_matches('/');
    Ok(trimmed
        .strip_suffix("/api")
        .unwrap_or(trimmed)
        .trim_end_matches('/')
        .to_owned())
}

/// Percent-encodes one path segment or query value: everything but RFC 3986's unreserved
/// characters, so that vhost `/` is `%2F`.
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("/"), "%2F");
        assert_eq!(segment("a b/c%é"), "a%20b%2Fc%25%C3%A9");
        assert_eq!(segment("q-1_x.y~"), "q-1_x.y~");
    }

    #[test]
    fn urls_are_normalised() {
        let ok = |u: &str| base_url(u).expect("a valid URL");
        assert_eq!(ok("http://h:15672"), "http://h:15672");
        assert_eq!(ok("h:15672/"), "http://h:15672");
        assert_eq!(ok("http://h:15672/api/"), "http://h:15672");
        assert_eq!(ok("http://h/rabbit/"), "http://h/rabbit");
        assert!(matches!(base_url("https://h"), Err(Failure::Usage(_))));
        assert!(matches!(base_url("http://"), Err(Failure::Usage(_))));
    }

    #[test]
    fn reasons_are_one_line() {
        let answer = |status, body: &str| Answer {
            status,
            body: body.as_bytes().to_vec(),
        };
        let a = answer(
            400,
            r#"{"error":"bad_request","reason":"Validation failed\n\npriority should be a number\n"}"#,
        );
        assert_eq!(a.reason(), "Validation failed: priority should be a number");
        let a = answer(
            400,
            r#"{"error":"bad_request","reason":["not_base64","x"]}"#,
        );
        assert_eq!(a.reason(), r#"["not_base64","x"]"#);
        assert_eq!(answer(401, "").reason(), "Unauthorized");
        let a = answer(400, "{\"reason\":\"evil\\u001b[31m\"}");
        assert_eq!(a.reason(), "evil\\u{1b}[31m");
    }

    #[test]
    fn exit_codes() {
        let refused = |status| Failure::Refused {
            status,
            message: String::new(),
        };
        assert_eq!(refused(404).exit_code(), 1);
        assert_eq!(refused(401).exit_code(), 77);
        assert_eq!(Failure::Unreachable(String::new()).exit_code(), 69);
        assert_eq!(Failure::Usage(String::new()).exit_code(), 2);
    }
}
