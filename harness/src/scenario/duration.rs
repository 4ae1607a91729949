//! Typed durations of the scenario format: a number with a unit (`250ms`, `7s`, `1.5s`, `2m`), never a bare number.

use std::fmt;
use std::time::Duration;

/// The longest duration a scenario may name anywhere: no single run may take longer.
pub const MAX_DURATION: Duration = Duration::from_secs(2 * 60 * 60);

/// Units a duration may carry, in the order the error messages list them.
pub const UNITS: [(&str, u128); 5] =
    [("ns", 1), ("us", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000)];

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// `5` or `0.5`: a number without a unit.
    NoUnit,
    /// `-1s`.
    Negative,
    /// `5 sec`, `s`, `1.2.3s`: not a number followed by a unit.
    Malformed,
    /// `5h`, `5sec`.
    UnknownUnit(String),
    /// `1.0000000001s`: finer than a nanosecond.
    TooPrecise,
    /// More than [`MAX_DURATION`].
    TooLong,
}

impl DurationError {
    /// The full message for `text`, saying what is allowed.
    pub fn message(&self, text: &str) -> String {
        let units = unit_list();
        match self {
            DurationError::NoUnit => {
                format!("duration \"{text}\" needs a unit ({units}), e.g. \"{text}s\"")
            }
            DurationError::Negative => {
                format!("duration \"{text}\" is negative; durations are >= 0, e.g. \"2s\"")
            }
            DurationError::Malformed => {
                format!("\"{text}\" is not a duration; write a number and a unit ({units}) without spaces, e.g. \"250ms\" or \"1.5s\"")
            }
            DurationError::UnknownUnit(unit) => {
                format!("duration \"{text}\" has unknown unit \"{unit}\"; allowed units: {units}")
            }
            DurationError::TooPrecise => {
                format!("duration \"{text}\" is finer than 1ns; use fewer decimals or a smaller unit")
            }
            DurationError::TooLong => {
                format!("duration \"{text}\" is longer than 120m (2 hours), the limit for anything in a scenario")
            }
        }
    }
}

fn unit_list() -> String {
    UNITS.iter().map(|(unit, _)| *unit).collect::<Vec<_>>().join(", ")
}

/// Parses `250ms`, `7s`, `1.5s`, `2m`, `0s`; at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(DurationError::Negative);
    }
    let number_end = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(DurationError::Malformed);
    }
    if unit.is_empty() {
        return Err(DurationError::NoUnit);
    }
    let Some((_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return if unit.chars().all(|c| c.is_ascii_alphabetic() || c == 'µ') {
            Err(DurationError::UnknownUnit(unit.to_string()))
        } else {
            Err(DurationError::Malformed)
        };
    };
    let limit = MAX_DURATION.as_nanos();
    let whole: u128 = whole.parse().map_err(|_| DurationError::TooLong)?;
    let mut nanos = whole.checked_mul(*scale).filter(|n| *n <= limit).ok_or(DurationError::TooLong)?;
    let mut place = *scale;
    for digit in fraction.bytes() {
        let digit = u128::from(digit - b'0');
        if place % 10 != 0 {
            if digit != 0 {
                return Err(DurationError::TooPrecise);
            }
            continue;
        }
        place /= 10;
        nanos += digit * place;
    }
    if nanos > limit {
        return Err(DurationError::TooLong);
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| DurationError::TooLong)?;
    let subsec = u32::try_from(nanos % 1_000_000_000).map_err(|_| DurationError::TooLong)?;
    Ok(Duration::new(secs, subsec))
}

/// The shortest exact form in the scenario syntax: `250ms`, `14s`, `1.5s`, `20us`.
pub fn format_duration(duration: Duration) -> String {
    DurationText(duration).to_string()
}

/// Displays a duration as [`format_duration`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationText(pub Duration);

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos >= 1_000_000_000 || nanos == 0 {
            let secs = nanos / 1_000_000_000;
            let frac = nanos % 1_000_000_000;
            if frac == 0 {
                return write!(f, "{secs}s");
            }
            let digits = format!("{frac:09}");
            return write!(f, "{secs}.{}s", digits.trim_end_matches('0'));
        }
        if nanos.is_multiple_of(1_000_000) {
            write!(f, "{}ms", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            write!(f, "{}us", nanos / 1_000)
        } else {
            write!(f, "{nanos}ns")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse_duration("20us"), Ok(Duration::from_micros(20)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("14s"), Ok(Duration::from_secs(14)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 3s "), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn parses_decimals_exactly() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.25s"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5ms"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse_duration("0.1m"), Ok(Duration::from_secs(6)));
        assert_eq!(parse_duration("1.000000001s"), Ok(Duration::new(1, 1)));
        assert_eq!(parse_duration("1.50ns"), Err(DurationError::TooPrecise));
        assert_eq!(parse_duration("1.0000000001s"), Err(DurationError::TooPrecise));
    }

    #[test]
    fn rejects_bad_forms() {
        assert_eq!(parse_duration("5"), Err(DurationError::NoUnit));
        assert_eq!(parse_duration("0"), Err(DurationError::NoUnit));
        assert_eq!(parse_duration("-1s"), Err(DurationError::Negative));
        assert_eq!(parse_duration("5h"), Err(DurationError::UnknownUnit("h".into())));
        assert_eq!(parse_duration("5sec"), Err(DurationError::UnknownUnit("sec".into())));
        assert_eq!(parse_duration("5 s"), Err(DurationError::Malformed));
        assert_eq!(parse_duration("s"), Err(DurationError::Malformed));
        assert_eq!(parse_duration("1.2.3s"), Err(DurationError::Malformed));
        assert_eq!(parse_duration("1.s"), Err(DurationError::Malformed));
        assert_eq!(parse_duration(".5s"), Err(DurationError::Malformed));
        assert_eq!(parse_duration(""), Err(DurationError::Malformed));
    }

    #[test]
    fn bounds_at_two_hours() {
        assert_eq!(parse_duration("120m"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("7200s"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("7200.000000001s"), Err(DurationError::TooLong));
        assert_eq!(parse_duration("121m"), Err(DurationError::TooLong));
        assert_eq!(parse_duration("99999999999999999999999999999999999999999s"), Err(DurationError::TooLong));
    }

    #[test]
    fn messages_say_what_is_allowed() {
        assert_eq!(DurationError::NoUnit.message("5"), "duration \"5\" needs a unit (ns, us, ms, s, m), e.g. \"5s\"");
        assert!(DurationError::TooLong.message("121m").contains("longer than 120m"));
    }

    #[test]
    fn formats_shortest_exact() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(14)), "14s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_micros(20)), "20us");
        assert_eq!(format_duration(Duration::from_nanos(7)), "7ns");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        for text in ["250ms", "14s", "1.5s", "20us", "7ns", "0s", "7200s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
