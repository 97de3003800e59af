//! Running a command on a pseudo-terminal, as a person at an interactive shell (or `docker run -it`)
//! does.

use crate::harness::assert_no_secrets;
use crate::oneshot::TIMEOUT;
use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A command running on a pseudo-terminal, as in an interactive shell (or `docker run -it`).
/// Echo is off, so the transcript is exactly what the program wrote.
pub struct Terminal {
    child: std::process::Child,
    master: std::fs::File,
    transcript: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Terminal {
    pub fn spawn(cmd: std::process::Command) -> Terminal {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        let mut cmd = cmd;
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let mut attrs = tcgetattr(&pty.slave).expect("tcgetattr");
        attrs.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &attrs).expect("tcsetattr");
        cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
            .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(Stdio::from(pty.slave));
        let child = cmd.spawn().expect("spawn on the pty");
        // The parent's copies of the terminal's slave side must go, so reads end when the child exits.
        drop(cmd);
        let mut reading = std::fs::File::from(pty.master.try_clone().unwrap());
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let sink = transcript.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the last slave descriptor is closed.
            while let Ok(n) = reading.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal { child, master: std::fs::File::from(pty.master), transcript, reader: Some(reader) }
    }

    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.transcript.lock().unwrap()).into_owned()
    }

    pub async fn expect(&self, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.screen().contains(needle) {
            if Instant::now() > deadline {
                panic!("the terminal never showed {needle:?}; it shows:\n{}", self.screen());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Types a line and presses Enter.
    pub fn type_line(&mut self, line: &str) {
        self.master.write_all(format!("{line}\r").as_bytes()).expect("type");
    }

    pub async fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                panic!("the command did not exit; the terminal shows:\n{}", self.screen());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if let Some(r) = self.reader.take() {
            let _ = tokio::task::spawn_blocking(move || r.join()).await;
        }
        assert_no_secrets("the terminal", &self.screen());
        status.code()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
