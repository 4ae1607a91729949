//! Headless Chromium driven over the DevTools protocol on a pipe (`chromium --headless --remote-debugging-pipe`):
//! what the report.html tests and `netfault bench report` use to load a page, read its DOM and take a
//! screenshot. Every wait is bounded.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// Where Chromium is looked for unless `NETFAULT_CHROMIUM` names it (Debian's package `chromium`).
const DEFAULT_CHROMIUM: &str = "chromium";
/// How long Chromium may take to answer one command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A running headless Chromium with a fresh profile, ended and its profile removed on drop.
pub struct Browser {
    child: Child,
    commands: File,
    messages: Receiver<Value>,
    next_id: u64,
    profile: PathBuf,
}

impl Browser {
    /// Starts Chromium headless with a `width` x `height` window and no network use of its own.
    pub fn launch(width: u32, height: u32) -> Result<Browser> {
        let program = std::env::var("NETFAULT_CHROMIUM").unwrap_or_else(|_| DEFAULT_CHROMIUM.into());
        let profile = std::env::temp_dir().join(format!("netfault-chromium-{}-{}", std::process::id(), unique()));
        fs::create_dir_all(&profile).map_err(|e| Error::sys(format!("create {}", profile.display()), e))?;
        let (to_browser_read, to_browser_write) = nix::unistd::pipe()?;
        let (from_browser_read, from_browser_write) = nix::unistd::pipe()?;
        let mut command = Command::new(&program);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let (read_fd, write_fd) = (to_browser_read.as_raw_fd(), from_browser_write.as_raw_fd());
        // SAFETY: between fork and exec only dup2 and fcntl run, both async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                // Chromium reads commands on fd 3 and writes answers on fd 4.
                for (from, to) in [(read_fd, 3), (write_fd, 4)] {
                    if from == to {
                        if libc::fcntl(to, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    } else if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| {
            Error::sys(
                format!(
                    "start {program} (Debian: apt-get install chromium; or set NETFAULT_CHROMIUM to a Chromium binary)"
                ),
                e,
            )
        })?;
        drop((to_browser_read, from_browser_write));
        let (tx, messages) = mpsc::channel();
        let reader = BufReader::new(File::from(from_browser_read));
        thread::Builder::new()
            .name("devtools-pipe".into())
            .spawn(move || read_messages(reader, tx))
            .map_err(|e| Error::sys("spawn the DevTools reader thread", e))?;
        Ok(Browser { child, commands: File::from(to_browser_write), messages, next_id: 0, profile })
    }

    /// Sends one command (to a page's session, or to the browser) and waits for its answer.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.commands.write_all(&bytes).map_err(|e| Error::sys(format!("send {method} to Chromium"), e))?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut answer = self.messages.recv_timeout(left).map_err(|_| {
                Error::Internal(format!("Chromium did not answer {method} within {}s", COMMAND_TIMEOUT.as_secs()))
            })?;
            if answer["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(error) = answer.get("error") {
                return Err(Error::Internal(format!("Chromium refused {method}: {error}")));
            }
            return Ok(answer["result"].take());
        }
    }

    /// Opens `url` in a new tab and waits until it has loaded and the JavaScript expression `ready` is true
    /// (report.html: `document.body.dataset.ready === '1'`).
    pub fn open(&mut self, url: &str, ready: &str, timeout: Duration) -> Result<Page<'_>> {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" }))?;
        let target = target["targetId"].as_str().unwrap_or_default().to_string();
        let attached = self.call(None, "Target.attachToTarget", json!({ "targetId": target, "flatten": true }))?;
        let session = attached["sessionId"].as_str().unwrap_or_default().to_string();
        let mut page = Page { browser: self, session, target };
        page.call("Page.navigate", json!({ "url": url }))?;
        let deadline = Instant::now() + timeout;
        loop {
            if page.eval(&format!("document.readyState === 'complete' && !!document.body && ({ready})"))? == json!(true)
            {
                return Ok(page);
            }
            if Instant::now() >= deadline {
                return Err(Error::Internal(format!("{url} was not drawn within {}s", timeout.as_secs_f64())));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call(None, "Browser.close", json!({}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // Closed already, or not answering: it goes either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.profile);
    }
}

/// One tab.
pub struct Page<'a> {
    browser: &'a mut Browser,
    session: String,
    target: String,
}

impl Page<'_> {
    fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let session = self.session.clone();
        self.browser.call(Some(&session), method, params)
    }

    /// The value of a JavaScript expression (a promise is awaited), as JSON.
    pub fn eval(&mut self, expression: &str) -> Result<Value> {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(Error::Internal(format!("JavaScript `{expression}` threw: {exception}")));
        }
        Ok(result["result"]["value"].clone())
    }

    /// A PNG of the viewport, or of the page's top `height` pixels.
    pub fn screenshot(&mut self, path: &Path, height: Option<u32>) -> Result<()> {
        let mut params = json!({ "format": "png" });
        if let Some(height) = height {
            let width = self.eval("document.documentElement.scrollWidth")?.as_f64().unwrap_or(1200.0);
            params["clip"] = json!({ "x": 0, "y": 0, "width": width, "height": height, "scale": 1 });
            params["captureBeyondViewport"] = json!(true);
        }
        let shot = self.call("Page.captureScreenshot", params)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .map_err(|e| Error::Internal(format!("screenshot is not base64: {e}")))?;
        fs::write(path, png).map_err(|e| Error::sys(format!("write {}", path.display()), e))
    }
}

impl Drop for Page<'_> {
    fn drop(&mut self) {
        let target = self.target.clone();
        let _ = self.browser.call(None, "Target.closeTarget", json!({ "targetId": target }));
    }
}

/// Hands every message Chromium writes (NUL-terminated JSON) to the channel until the pipe closes.
fn read_messages(mut reader: BufReader<File>, tx: mpsc::Sender<Value>) {
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(0, &mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if buffer.last() == Some(&0) {
                    buffer.pop();
                }
                if let Ok(message) = serde_json::from_slice(&buffer) {
                    if tx.send(message).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `file:///abs/path` for a local file.
pub fn file_url(path: &Path) -> Result<String> {
    let absolute = fs::canonicalize(path).map_err(|e| Error::sys(format!("find {}", path.display()), e))?;
    Ok(format!("file://{}", absolute.display()))
}
