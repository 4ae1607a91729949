//! What the example's two programs share: `fetch`, a client that sends one request and waits for one reply
//! line, with connect, read and write timeouts and one retry; and `serve`, a server that answers it. Both say
//! what failed with the errno's name, so a test can match it.

use std::io;
use std::process::ExitCode;
use std::time::Duration;

/// Exit status of `fetch` when connecting failed twice.
pub const EXIT_CONNECT: u8 = 3;
/// Exit status of `fetch` when reading the reply failed.
pub const EXIT_READ: u8 = 4;
/// Exit status of `fetch` when sending the request failed.
pub const EXIT_WRITE: u8 = 5;
/// Exit status of `serve` when its connection failed.
pub const EXIT_CONNECTION: u8 = 1;
/// Exit status of either program on bad arguments.
pub const EXIT_USAGE: u8 = 2;

/// The errno's symbolic name, as `errno -l` prints it (`ETIMEDOUT`), or how the error came about.
pub fn errno_name(error: &io::Error) -> String {
    let Some(code) = error.raw_os_error() else {
        return format!("{:?}", error.kind());
    };
    let name = match code {
        libc::EAGAIN => "EAGAIN",
        libc::EPIPE => "EPIPE",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EINTR => "EINTR",
        _ => return format!("errno {code}"),
    };
    name.to_string()
}

/// `250ms`, `3s` or `1.5s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        return Err(format!("duration {text:?} needs a unit: ms or s, e.g. 3s"));
    };
    match number.parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(Duration::from_secs_f64(value * scale)),
        _ => Err(format!("duration {text:?} is not a non-negative number with a unit, e.g. 250ms")),
    }
}

/// The value after a `--flag`, or what is missing.
pub fn value_of(flag: &str, args: &mut impl Iterator<Item = String>) -> Result<String, String> {
    args.next().ok_or_else(|| format!("{flag} needs a value"))
}

/// Prints `program: message` on stderr and gives the exit status.
pub fn fail(program: &str, status: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("{program}: {message}");
    ExitCode::from(status)
}

/// Seconds with milliseconds, as both programs print durations: `3.004s`.
pub fn seconds(duration: Duration) -> String {
    format!("{:.3}s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_ms_and_s() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("3").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn errnos_have_their_names() {
        assert_eq!(errno_name(&io::Error::from_raw_os_error(libc::ETIMEDOUT)), "ETIMEDOUT");
        assert_eq!(errno_name(&io::Error::from_raw_os_error(libc::EWOULDBLOCK)), "EAGAIN");
        assert_eq!(errno_name(&io::Error::from_raw_os_error(libc::ENOSPC)), format!("errno {}", libc::ENOSPC));
        assert_eq!(errno_name(&io::Error::from(io::ErrorKind::UnexpectedEof)), "UnexpectedEof");
    }
}
