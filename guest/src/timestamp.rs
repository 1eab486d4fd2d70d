//! Timestamps as the reference writes them (spec/peer.md §2.4): seconds since the Unix
//! epoch as a decimal float string, printed like Python's `repr(float)` from an instant
//! with microsecond precision.

use std::fmt;

/// An instant in UTC with microsecond precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// From microseconds since the Unix epoch.
    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    /// Microseconds since the Unix epoch.
    pub const fn micros(self) -> i64 {
        self.0
    }

    /// Parse the wire form. Accepts what Python's `float()` accepts for ordinary
    /// timestamps (surrounding whitespace, integral or fractional, exponent), rounded to
    /// the microsecond. Non-finite values and garbage are `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let seconds: f64 = text.trim().parse().ok()?;
        Self::from_seconds(seconds)
    }

    /// From float seconds (a JSON number on the wire), rounded to the microsecond.
    pub fn from_seconds(seconds: f64) -> Option<Self> {
        if !seconds.is_finite() {
            return None;
        }
        let micros = (seconds * 1_000_000.0).round();
        if micros.abs() > i64::MAX as f64 / 2.0 {
            return None;
        }
        Some(Timestamp(micros as i64))
    }

    /// Seconds between two instants (positive when `self` is later).
    pub fn seconds_since(self, earlier: Timestamp) -> f64 {
        (self.0 - earlier.0) as f64 / 1_000_000.0
    }
}

impl fmt::Display for Timestamp {
    /// Python's `str(micros / 1e6)`: the shortest string that round-trips the binary64
    /// value, always with a fractional part. Rust's `Display` for `f64` is also
    /// shortest-round-trip but drops `.0` and never uses exponents; Python switches to
    /// exponent notation only below 1e-4 or from 1e16 on, far outside real timestamps.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.0 as f64 / 1_000_000.0;
        let text = seconds.to_string();
        if text.contains('.') {
            f.write_str(&text)
        } else {
            write!(f, "{text}.0")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_777_636_800_000_000; // 2026-05-01T12:00:00Z

    #[test]
    fn formats_like_python_repr() {
        let cases = [
            (T, "1777636800.0"),
            (T + 100_000, "1777636800.1"),
            (T + 500, "1777636800.0005"),
            (T + 5, "1777636800.000005"),
            (T + 123_456, "1777636800.123456"),
            (1_771_848_000_123_456, "1771848000.123456"),
            (1_771_819_200_123_456, "1771819200.123456"),
        ];
        for (micros, text) in cases {
            assert_eq!(Timestamp::from_micros(micros).to_string(), text);
        }
    }

    #[test]
    fn parses_and_rounds_to_micros() {
        assert_eq!(
            Timestamp::parse("1773311445.123456").unwrap().micros(),
            1_773_311_445_123_456
        );
        assert_eq!(Timestamp::parse(" 1777636800 ").unwrap().micros(), T);
        assert_eq!(Timestamp::parse("1.7776368e9").unwrap().micros(), T);
        assert_eq!(
            Timestamp::from_seconds(1777636800.1).unwrap().micros(),
            T + 100_000
        );
        for bad in ["", "bad-ts", "nan", "inf", "1e400"] {
            assert_eq!(Timestamp::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn round_trips_every_microsecond_offset_sampled() {
        for offset in (0..1_000_000).step_by(7919) {
            let ts = Timestamp::from_micros(T + offset);
            assert_eq!(Timestamp::parse(&ts.to_string()), Some(ts));
        }
    }
}
