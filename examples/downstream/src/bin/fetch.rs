//! `fetch ADDR:PORT [--connect-timeout 2s] [--read-timeout 3s] [--write-timeout 2s] [--retry-delay 500ms]
//! [--request TEXT] [--upload BYTES] [--idle D]`
//!
//! Connects (a failed attempt is retried once, after the retry delay), sends the request line `TEXT` (or
//! `upload BYTES` followed by that many bytes), and prints the server's one-line reply; with `--idle`, keeps
//! the connection open that long afterwards, as a connection pool would. The read timeout bounds each read
//! (SO_RCVTIMEO); the write timeout bounds how long sending may make no progress (poll for POLLOUT). Exit
//! status 0 on a
//! reply; 3 when both connection attempts failed, 4 when reading the reply failed, 5 when sending failed;
//! stderr says which call failed, with the errno's name and how long the call took.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use netfault_example::{
    errno_name, fail, parse_duration, seconds, value_of, EXIT_CONNECT, EXIT_READ, EXIT_USAGE, EXIT_WRITE,
};

const NAME: &str = "fetch";
const ATTEMPTS: u32 = 2;

struct Options {
    server: SocketAddr,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    retry_delay: Duration,
    request: String,
    upload: usize,
    idle: Duration,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut server = None;
    let mut options = Options {
        server: SocketAddr::from(([0, 0, 0, 0], 0)),
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(3),
        write_timeout: Duration::from_secs(2),
        retry_delay: Duration::from_millis(500),
        request: "hello".into(),
        upload: 0,
        idle: Duration::ZERO,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--connect-timeout" => options.connect_timeout = parse_duration(&value_of(&arg, &mut args)?)?,
            "--read-timeout" => options.read_timeout = parse_duration(&value_of(&arg, &mut args)?)?,
            "--write-timeout" => options.write_timeout = parse_duration(&value_of(&arg, &mut args)?)?,
            "--retry-delay" => options.retry_delay = parse_duration(&value_of(&arg, &mut args)?)?,
            "--request" => options.request = value_of(&arg, &mut args)?,
            "--idle" => options.idle = parse_duration(&value_of(&arg, &mut args)?)?,
            "--upload" => {
                let text = value_of(&arg, &mut args)?;
                options.upload = text.parse().map_err(|_| format!("--upload {text:?}: need a byte count"))?;
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
            address => {
                let parsed = address.parse().map_err(|_| format!("{address:?} is not an ADDRESS:PORT"))?;
                server = Some(parsed);
            }
        }
    }
    options.server = server.ok_or("usage: fetch ADDRESS:PORT [--connect-timeout 2s] [--read-timeout 3s] ...")?;
    Ok(options)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(message) => return fail(NAME, EXIT_USAGE, message),
    };
    let server = options.server;
    let mut stream = match connect(&options) {
        Ok(stream) => stream,
        Err(message) => return fail(NAME, EXIT_CONNECT, message),
    };
    if let Err(e) = stream.set_read_timeout(Some(options.read_timeout)) {
        return fail(NAME, EXIT_USAGE, format!("set the read timeout (SO_RCVTIMEO): {}", errno_name(&e)));
    }
    if let Err(message) = send_request(&mut stream, &options) {
        return fail(NAME, EXIT_WRITE, format!("write to {server}: {message}"));
    }
    match read_reply(&mut stream) {
        Ok(reply) => {
            println!("{reply}");
            thread::sleep(options.idle);
            ExitCode::SUCCESS
        }
        Err(message) => fail(NAME, EXIT_READ, format!("read from {server}: {message}")),
    }
}

/// Connects within the connect timeout; a failed first attempt is retried once after the retry delay.
fn connect(options: &Options) -> Result<TcpStream, String> {
    let mut attempt = 1;
    loop {
        let started = Instant::now();
        let error = match TcpStream::connect_timeout(&options.server, options.connect_timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => e,
        };
        let failure = format!(
            "connect to {} (attempt {attempt} of {ATTEMPTS}): {} after {}",
            options.server,
            errno_name(&error),
            seconds(started.elapsed())
        );
        if attempt == ATTEMPTS {
            return Err(format!("{failure}; giving up"));
        }
        eprintln!("{NAME}: {failure}; retrying in {}", seconds(options.retry_delay));
        thread::sleep(options.retry_delay);
        attempt += 1;
    }
}

/// Writes the request line, or `upload N` and N bytes, without blocking, waiting for room (POLLOUT) at most the
/// write timeout each time the socket takes nothing more; says how the sending failed.
fn send_request(stream: &mut TcpStream, options: &Options) -> Result<(), String> {
    let mut request = if options.upload > 0 {
        format!("upload {}\n", options.upload).into_bytes()
    } else {
        format!("{}\n", options.request).into_bytes()
    };
    request.resize(request.len() + options.upload, b'x');
    let total = request.len();
    stream.set_nonblocking(true).map_err(|e| format!("O_NONBLOCK: {}", errno_name(&e)))?;
    let mut sent = 0;
    while sent < total {
        match stream.write(&request[sent..]) {
            Ok(0) => return Err(format!("the connection took no more bytes ({sent} of {total} sent)")),
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let started = Instant::now();
                match writable_within(stream, options.write_timeout) {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(format!(
                            "{}: no room for {} ({sent} of {total} bytes sent)",
                            errno_name(&e),
                            seconds(started.elapsed())
                        ))
                    }
                    Err(e) => return Err(format!("poll: {}", errno_name(&e))),
                }
            }
            Err(e) => return Err(format!("{} ({sent} of {total} bytes sent)", errno_name(&e))),
        }
    }
    stream.set_nonblocking(false).map_err(|e| format!("O_NONBLOCK off: {}", errno_name(&e)))
}

/// `poll(POLLOUT)`: whether the socket has room for more within `timeout`.
fn writable_within(stream: &TcpStream, timeout: Duration) -> std::io::Result<bool> {
    let mut fds = [libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLOUT, revents: 0 }];
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, and its count.
    match unsafe { libc::poll(fds.as_mut_ptr(), 1, millis) } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// Reads up to the reply's newline; says which read failed and how long it waited.
fn read_reply(stream: &mut TcpStream) -> Result<String, String> {
    let mut reply = Vec::new();
    let mut buffer = [0u8; 512];
    loop {
        let started = Instant::now();
        match stream.read(&mut buffer) {
            Ok(0) => return Err(format!("EOF before the reply's end ({} bytes)", reply.len())),
            Ok(n) => {
                reply.extend_from_slice(&buffer[..n]);
                if let Some(end) = reply.iter().position(|b| *b == b'\n') {
                    return Ok(String::from_utf8_lossy(&reply[..end]).into_owned());
                }
            }
            Err(e) => return Err(format!("{} after {}", errno_name(&e), seconds(started.elapsed()))),
        }
    }
}
