//! Topic rules: validation against the configured list, normalisation, and
//! glob matching (`*` matches any run of characters, dots included).

/// Why a destination's topic list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("validation failed: invalid topics")]
    Invalid,
}

/// Glob match where `*` matches any run of characters (including none).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == text;
    }
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Does a destination subscribed to `topics` receive an event on `topic`?
/// An event topic of `""` or `"*"` matches every destination.
pub fn matches(topics: &[String], topic: &str) -> bool {
    if topic.is_empty() || topic == "*" {
        return true;
    }
    topics.iter().any(|t| t == "*" || glob_match(t, topic))
}

/// Validates a destination's topic list against the configured topics.
pub fn validate(topics: &[String], configured: &[String], allow_wildcards: bool) -> Result<(), TopicError> {
    if topics.is_empty() {
        return Err(TopicError::Invalid);
    }
    if topics.len() == 1 && topics[0] == "*" {
        return Ok(());
    }
    for t in topics {
        if t.is_empty() {
            return Err(TopicError::Invalid);
        }
        if configured.is_empty() {
            if t.contains('*') && !(allow_wildcards || t == "*") {
                return Err(TopicError::Invalid);
            }
            continue;
        }
        if t == "*" {
            // "*" must stand alone when topics are configured.
            return Err(TopicError::Invalid);
        }
        if t.contains('*') {
            if !allow_wildcards || !configured.iter().any(|c| glob_match(t, c)) {
                return Err(TopicError::Invalid);
            }
        } else if !configured.contains(t) {
            return Err(TopicError::Invalid);
        }
    }
    Ok(())
}

/// Removes duplicates and entries covered by a sibling wildcard; `*` absorbs all.
pub fn normalize(topics: &[String]) -> Vec<String> {
    if topics.iter().any(|t| t == "*") {
        return vec!["*".to_string()];
    }
    let mut out: Vec<String> = Vec::with_capacity(topics.len());
    for t in topics {
        if out.contains(t) {
            continue;
        }
        let covered = topics
            .iter()
            .any(|other| other != t && other.contains('*') && glob_match(other, t));
        if !covered {
            out.push(t.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn glob() {
        assert!(glob_match("user.*", "user.profile.updated"));
        assert!(glob_match("user.*", "user."));
        assert!(glob_match("*.created", "user.created"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("user.*", "order.created"));
        assert!(!glob_match("a*b", "aXXbY"));
    }

    #[test]
    fn matching() {
        assert!(matches(&v(&["*"]), "x"));
        assert!(matches(&v(&["a", "b"]), "b"));
        assert!(!matches(&v(&["a"]), "b"));
        assert!(matches(&v(&["a"]), ""));
    }

    #[test]
    fn validation() {
        let conf = v(&["user.created", "user.deleted", "order.created"]);
        assert!(validate(&v(&["*"]), &conf, false).is_ok());
        assert!(validate(&v(&[]), &conf, false).is_err());
        assert!(validate(&v(&["user.created"]), &conf, false).is_ok());
        assert!(validate(&v(&["nope"]), &conf, false).is_err());
        assert!(validate(&v(&["*", "user.created"]), &conf, false).is_err());
        assert!(validate(&v(&["user.*"]), &conf, false).is_err());
        assert!(validate(&v(&["user.*"]), &conf, true).is_ok());
        assert!(validate(&v(&["zzz.*"]), &conf, true).is_err());
        assert!(validate(&v(&["anything"]), &[], false).is_ok());
        assert!(validate(&v(&["any.*"]), &[], false).is_err());
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize(&v(&["a", "a", "b"])), v(&["a", "b"]));
        assert_eq!(normalize(&v(&["user.*", "user.created", "x"])), v(&["user.*", "x"]));
        assert_eq!(normalize(&v(&["a", "*"])), v(&["*"]));
    }
}
