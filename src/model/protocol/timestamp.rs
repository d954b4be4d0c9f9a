//! Timestamps of results and events: one RFC 3339 format, UTC,
//! milliseconds.

/// An instant in the one format of every timestamp in results and events:
/// RFC 3339, UTC, milliseconds (`2024-05-01T10:00:00.123Z`).
pub fn rfc3339_millis(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Current time as [`rfc3339_millis`] writes it.
pub fn now_rfc3339() -> String {
    rfc3339_millis(chrono::Utc::now())
}

/// An RFC 3339 instant from elsewhere (Docker's carry nanoseconds, maybe an
/// offset) as [`rfc3339_millis`] writes it; `None` when it is not RFC 3339.
pub fn normalize_rfc3339(s: &str) -> Option<String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| rfc3339_millis(t.with_timezone(&chrono::Utc)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_timestamp_has_one_format() {
        let shape = |s: &str| {
            let b = s.as_bytes();
            s.len() == 24
                && s.ends_with('Z')
                && b[10] == b'T'
                && b[19] == b'.'
                && chrono::DateTime::parse_from_rfc3339(s).is_ok()
        };
        assert!(shape(&now_rfc3339()), "{}", now_rfc3339());
        // Docker's instants: nanoseconds, UTC or an offset.
        assert_eq!(
            normalize_rfc3339("2026-05-01T10:00:00.123456789Z").as_deref(),
            Some("2026-05-01T10:00:00.123Z")
        );
        assert_eq!(
            normalize_rfc3339("2026-05-01T12:00:00.5+02:00").as_deref(),
            Some("2026-05-01T10:00:00.500Z")
        );
        assert_eq!(
            normalize_rfc3339("2026-05-01T10:00:00Z").as_deref(),
            Some("2026-05-01T10:00:00.000Z")
        );
        assert_eq!(normalize_rfc3339("0001-01-01 garbage"), None);
    }
}
