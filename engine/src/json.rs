//! Small JSON helpers for the hot path: compacting a validated document without
//! re-ordering its keys.

/// Removes insignificant whitespace from a JSON text that is already known to be
/// valid, keeping key order and string contents byte for byte.
pub fn compact(src: &str) -> String {
    let bytes = src.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut in_str = false;
    let mut escaped = false;
    for &b in bytes {
        if in_str {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
        } else if b == b'"' {
            in_str = true;
            out.push(b);
        } else if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            out.push(b);
        }
    }
    // Only ASCII whitespace outside strings was removed, so UTF-8 stays valid.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_and_strings() {
        let s = "{ \"zebra\": 1,\n \"alpha\" : \"a b\\\" c\", \"m\": [1, 2] }";
        assert_eq!(super::compact(s), r#"{"zebra":1,"alpha":"a b\" c","m":[1,2]}"#);
    }
}
