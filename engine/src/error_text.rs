//! Error messages with their causes: a library's top-level error often says
//! only "error performing TLS handshake" or "dispatch failure", and the
//! reason (an unknown issuer, a refused connection) is a cause.

/// `e` and each of its causes, joined by `": "`; a cause whose text the
/// message already holds is not repeated.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_follow_the_message_once() {
        let e = Outer(std::io::Error::other("the reason"));
        assert_eq!(super::with_causes(&e), "outer: the reason");
    }
}
