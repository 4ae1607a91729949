//! `serve PORT [--keepalive IDLE,INTERVAL,COUNT] [--stall D] [--reply-delay D]`
//!
//! Listens on PORT, accepts one connection, and answers each request line with `ok LENGTH` (`upload N` and
//! its N bytes with `ok N`), after the reply delay. `--keepalive` turns TCP keepalive on for the connection
//! (seconds: idle time, probe interval, probe count), so that a peer gone silent is noticed; `--stall D`
//! reads nothing for D after accepting (a slow reader). Exit status 0 when the client closes the connection,
//! 1 when the connection fails (stderr says how, with the errno's name and how long the read waited).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use netfault_example::{errno_name, fail, parse_duration, seconds, value_of, EXIT_CONNECTION, EXIT_USAGE};

const NAME: &str = "serve";

/// TCP keepalive of the accepted connection, in seconds.
#[derive(Clone, Copy)]
struct Keepalive {
    idle: i32,
    interval: i32,
    count: i32,
}

struct Options {
    port: u16,
    keepalive: Option<Keepalive>,
    stall: Duration,
    reply_delay: Duration,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut port = None;
    let mut options = Options { port: 0, keepalive: None, stall: Duration::ZERO, reply_delay: Duration::ZERO };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--keepalive" => {
                let text = value_of(&arg, &mut args)?;
                let numbers: Vec<i32> = text.split(',').filter_map(|n| n.parse().ok()).collect();
                let [idle, interval, count] = numbers[..] else {
                    return Err(format!("--keepalive {text:?}: need IDLE,INTERVAL,COUNT, e.g. 2,1,3"));
                };
                options.keepalive = Some(Keepalive { idle, interval, count });
            }
            "--stall" => options.stall = parse_duration(&value_of(&arg, &mut args)?)?,
            "--reply-delay" => options.reply_delay = parse_duration(&value_of(&arg, &mut args)?)?,
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
            number => port = Some(number.parse().map_err(|_| format!("{number:?} is not a port"))?),
        }
    }
    options.port = port.ok_or("usage: serve PORT [--keepalive IDLE,INTERVAL,COUNT] [--stall D] [--reply-delay D]")?;
    Ok(options)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(message) => return fail(NAME, EXIT_USAGE, message),
    };
    let listener = match TcpListener::bind(("0.0.0.0", options.port)) {
        Ok(listener) => listener,
        Err(e) => return fail(NAME, EXIT_USAGE, format!("listen on port {}: {}", options.port, errno_name(&e))),
    };
    println!("{NAME}: listening on 0.0.0.0:{}", options.port);
    let (stream, peer) = match listener.accept() {
        Ok(accepted) => accepted,
        Err(e) => return fail(NAME, EXIT_CONNECTION, format!("accept: {}", errno_name(&e))),
    };
    println!("{NAME}: connection from {peer}");
    if let Some(keepalive) = options.keepalive {
        if let Err(e) = set_keepalive(&stream, keepalive) {
            return fail(NAME, EXIT_USAGE, format!("turn keepalive on: {}", errno_name(&e)));
        }
    }
    thread::sleep(options.stall);
    match serve(stream, options.reply_delay) {
        Ok(requests) => {
            println!("{NAME}: {peer} closed the connection after {requests} request(s)");
            ExitCode::SUCCESS
        }
        Err(message) => fail(NAME, EXIT_CONNECTION, format!("connection from {peer}: {message}")),
    }
}

/// `setsockopt(SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT)`.
fn set_keepalive(stream: &TcpStream, keepalive: Keepalive) -> std::io::Result<()> {
    let options = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, keepalive.idle),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, keepalive.interval),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, keepalive.count),
    ];
    for (level, name, value) in options {
        // SAFETY: the descriptor is the stream's own, and the value is a c_int of the size given.
        let result = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Answers request lines until the client closes; the number of requests answered, or how reading failed.
fn serve(stream: TcpStream, reply_delay: Duration) -> Result<usize, String> {
    let mut writer = stream.try_clone().map_err(|e| format!("dup: {}", errno_name(&e)))?;
    let mut reader = BufReader::new(stream);
    let mut requests = 0;
    loop {
        let mut line = String::new();
        let started = Instant::now();
        let read = reader.read_line(&mut line);
        let length = match read {
            Ok(0) => return Ok(requests),
            Ok(_) => match line.trim_end().strip_prefix("upload ") {
                Some(count) => {
                    let count: u64 = count.parse().map_err(|_| format!("bad upload request {line:?}"))?;
                    let received = std::io::copy(&mut reader.by_ref().take(count), &mut std::io::sink())
                        .map_err(|e| format!("{} while receiving the upload", errno_name(&e)))?;
                    received
                }
                None => line.trim_end().len() as u64,
            },
            Err(e) => {
                return Err(format!("{} after {} waiting for a request", errno_name(&e), seconds(started.elapsed())))
            }
        };
        thread::sleep(reply_delay);
        writer.write_all(format!("ok {length}\n").as_bytes()).map_err(|e| format!("{} replying", errno_name(&e)))?;
        requests += 1;
    }
}
