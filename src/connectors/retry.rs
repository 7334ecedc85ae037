//! Retry policy: exponential backoff with full jitter, bounded, honouring `Retry-After`.
//!
//! What is retried: 429, 500, 502, 503, 504 and transport failures (connection refused or
//! reset, timeouts). Never a 400-class answer other than 429 — those say the request itself
//! is wrong and will be wrong the next time too. A transport failure of a request that is
//! not idempotent is retried only when the request provably never left (connect errors),
//! so a create is never sent twice.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// How hard to try.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    /// Backoff base: the first retry waits up to this long (jittered).
    pub base_delay: Duration,
    /// Longest wait between attempts (also caps `Retry-After`).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (`attempt` counts from 1): the server's
    /// `Retry-After` when it sent one, else `base × 2^(attempt-1)` with full jitter.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        if let Some(retry_after) = retry_after {
            return retry_after.min(self.max_delay);
        }
        let exponent = attempt.saturating_sub(1).min(20);
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        ceiling.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// Whether an answer with this status is worth another attempt.
pub fn retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// `Retry-After` in seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>()
        && seconds.is_finite()
        && seconds >= 0.0
    {
        return Some(Duration::from_secs_f64(seconds));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only form servers send today.
fn parse_http_date(value: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)?
        + 1;
    let text = format!("{year}-{month:02}-{:0>2}T{time}Z", day);
    let parsed = crate::mapping::transforms::datetime::DateTime::parse(&text)?;
    let seconds = u64::try_from(parsed.unix_seconds()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// A cheap jitter source in 0–1 (no need for cryptographic randomness here).
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_retry_after_wins() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(policy.delay(1, None, 1.0), Duration::from_millis(100));
        assert_eq!(policy.delay(3, None, 1.0), Duration::from_millis(400));
        assert_eq!(policy.delay(10, None, 1.0), Duration::from_secs(1));
        assert_eq!(policy.delay(3, None, 0.5), Duration::from_millis(200));
        assert_eq!(
            policy.delay(1, Some(Duration::from_millis(700)), 0.0),
            Duration::from_millis(700)
        );
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(3600)), 0.0),
            Duration::from_secs(1),
            "Retry-After is capped"
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(
            retry_after(&headers),
            Some(Duration::ZERO),
            "a past date: go now"
        );
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn only_throttling_and_server_errors_are_retryable() {
        for code in [429, 500, 502, 503, 504] {
            assert!(retryable_status(StatusCode::from_u16(code).unwrap()));
        }
        for code in [400, 401, 403, 404, 409, 412, 501] {
            assert!(!retryable_status(StatusCode::from_u16(code).unwrap()));
        }
    }
}
