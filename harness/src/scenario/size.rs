//! Byte sizes of the scenario format: a whole number with a unit (`160B`, `64MiB`, `512KiB`, `1GiB`), never a
//! bare number, as `tcpdump -s`/`-B` and the kernel's buffers count them.

/// Units a size may carry, in the order the error messages list them.
pub const UNITS: [(&str, u64); 4] = [("B", 1), ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)];

/// The size `text` names in bytes, or a message saying what is allowed.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let units = UNITS.iter().map(|(unit, _)| *unit).collect::<Vec<_>>().join(", ");
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(format!("size \"{text}\" must be a whole number with a unit ({units}), e.g. \"64MiB\""));
    }
    if unit.is_empty() {
        return Err(format!("size \"{text}\" needs a unit ({units}), e.g. \"{text}MiB\""));
    }
    let Some((_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(format!("size \"{text}\" has unknown unit \"{unit}\"; allowed: {units}, e.g. \"64MiB\""));
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(*scale))
        .ok_or_else(|| format!("size \"{text}\" is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_with_binary_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("0KiB"), Ok(0));
        assert_eq!(parse_size("160B"), Ok(160));
    }

    #[test]
    fn refusals_say_what_is_allowed() {
        assert!(parse_size("64").unwrap_err().contains("needs a unit"));
        assert!(parse_size("64MB").unwrap_err().contains("unknown unit \"MB\""));
        assert!(parse_size("MiB").unwrap_err().contains("whole number"));
        assert!(parse_size("1.5MiB").unwrap_err().contains("unknown unit \".5MiB\""));
        assert!(parse_size("-1MiB").unwrap_err().contains("whole number"));
        assert!(parse_size("99999999999999GiB").unwrap_err().contains("too large"));
    }
}
