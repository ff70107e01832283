//! How the pages write times, sizes and URLs.

/// Microseconds since the Unix epoch as `2026-01-02T03:04:05Z`.
pub(crate) use crate::announcer::utc;

/// A byte count for people: `812 B`, `3.20 KiB`, `41.5 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{value:.2} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `s` percent-encoded for a path segment or a query value: every byte
/// but the unreserved characters of RFC 3986.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The record page of `key` (or, for a type without a key, `ordinal`).
pub(crate) fn record_href(version: u64, url_type: &str, key: Option<&str>, ordinal: u32) -> String {
    match key {
        Some(k) => format!(
            "/versions/{version}/types/{}/record?key={}",
            enc(url_type),
            enc(k)
        ),
        None => format!(
            "/versions/{version}/types/{}/record?ordinal={ordinal}",
            enc(url_type)
        ),
    }
}

/// The history page of `key`.
pub(crate) fn history_href(url_type: &str, key: &str) -> String {
    format!("/history?type={}&key={}", enc(url_type), enc(key))
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_all_but_unreserved() {
        assert_eq!(super::enc("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(
            super::enc("title=Heat, year=1995&x/é"),
            "title%3DHeat%2C%20year%3D1995%26x%2F%C3%A9"
        );
    }
}
