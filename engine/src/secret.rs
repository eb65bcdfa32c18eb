//! A value that must not reach a log line, a panic message or an error
//! report: its `Debug` and `Display` show that it is set, never what it is.

use std::fmt;

/// A secret string (a key, a password, a URL that carries a password, a
/// service-account key). Read it with [`Secret::expose`], at the one place
/// that hands it to a library or compares it.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// For a URL: the URL with its password replaced, for messages.
    pub fn redacted_url(&self) -> String {
        redacted_url(&self.0)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Whether it is set is useful when reading a config dump; its length
        // or any part of it is not.
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"<redacted>\"" })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A URL whose password is a secret: `Debug` shows it with the password
/// (and any query, which may carry tokens) replaced.
pub fn redacted_url(url: &str) -> String {
    let (head, _) = url.split_once('?').unwrap_or((url, ""));
    match (head.find("://"), head.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &head[s + 3..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{}{user}:<redacted>{}", &head[..s + 3], &head[at..])
        }
        _ => head.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "\"<redacted>\"");
        assert_eq!(format!("{s}"), "\"<redacted>\"");
        assert_eq!(format!("{:?}", Some(&s)), "Some(\"<redacted>\")");
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn urls_keep_everything_but_the_password() {
        assert_eq!(
            redacted_url("amqp://guest:guest@rabbit:5672/vhost?auth=x"),
            "amqp://guest:<redacted>@rabbit:5672/vhost"
        );
        assert_eq!(redacted_url("postgres://u:p@w@db/x"), "postgres://u:<redacted>@db/x");
        assert_eq!(redacted_url("postgres://db/x"), "postgres://db/x");
    }
}
