//! Small JSON helpers for the hot path: compacting a validated document without
//! re-ordering its keys.

/// `compact`, as the shared text an event keeps: a document that is compact
/// already (the usual case) is copied once, straight from the request body.
pub fn compact_shared(src: &str) -> std::sync::Arc<str> {
    if is_compact(src) {
        std::sync::Arc::from(src)
    } else {
        std::sync::Arc::from(compact(src))
    }
}

/// Walks a JSON text's bytes, telling `visit` whether each one is
/// insignificant whitespace (outside strings); stops when `visit` says so.
fn scan(src: &str, mut visit: impl FnMut(u8, bool) -> bool) {
    let mut in_str = false;
    let mut escaped = false;
    for &b in src.as_bytes() {
        let space = if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            false
        } else {
            in_str = b == b'"';
            matches!(b, b' ' | b'\n' | b'\r' | b'\t')
        };
        if !visit(b, space) {
            return;
        }
    }
}

/// Whether `src` has no whitespace outside strings.
fn is_compact(src: &str) -> bool {
    let mut compact = true;
    scan(src, |_, space| {
        compact &= !space;
        compact
    });
    compact
}

/// Removes insignificant whitespace from a JSON text that is already known to be
/// valid, keeping key order and string contents byte for byte.
pub fn compact(src: &str) -> String {
    let mut out = Vec::with_capacity(src.len());
    scan(src, |b, space| {
        if !space {
            out.push(b);
        }
        true
    });
    // Only ASCII whitespace outside strings was removed, so UTF-8 stays valid.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_and_strings() {
        let s = "{ \"zebra\": 1,\n \"alpha\" : \"a b\\\" c\", \"m\": [1, 2] }";
        assert_eq!(super::compact(s), r#"{"zebra":1,"alpha":"a b\" c","m":[1,2]}"#);
        assert_eq!(&*super::compact_shared(s), r#"{"zebra":1,"alpha":"a b\" c","m":[1,2]}"#);
        let done = r#"{"a":"x y\" z","b":[1,2]}"#;
        assert!(super::is_compact(done));
        assert_eq!(&*super::compact_shared(done), done);
    }
}
