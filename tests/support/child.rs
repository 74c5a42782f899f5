//! A child process's output, read with a deadline. The process tests (`kill9.rs`, `lock.rs`,
//! the CLI's) re-execute their own test binary as a child and wait for what it prints; a read
//! of a pipe blocks for as long as the child lives, so the lines are read on a thread of their
//! own and every wait for one ends by [`super::WAIT_DEADLINE`].

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};

use super::WAIT_DEADLINE;

/// This test binary again, as a child that runs only the test `test` with the environment
/// variables `env` (which tell that test it is the child, and what to do); its stdin is `stdin`,
/// its stdout read with [`ChildOutput`], its stderr this process's.
// NOTE: the caller waits for the child; a panic on the way ends the test process, and the child
// with it (a child reading its stdin sees it close).
#[allow(clippy::zombie_processes)]
pub fn spawn_test(test: &str, env: &[(&str, &OsStr)], stdin: Stdio) -> (Child, ChildOutput) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the test binary");
    let out = ChildOutput::new(child.stdout.take().expect("the child's stdout is piped"));
    (child, out)
}

/// The lines a child writes to its stdout.
pub struct ChildOutput {
    lines: Receiver<String>,
    seen: String,
}

impl ChildOutput {
    /// Reads `stdout` from now on.
    pub fn new(stdout: ChildStdout) -> ChildOutput {
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut out = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                match out.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        ChildOutput {
            lines,
            seen: String::new(),
        }
    }

    /// The next line, `\n` included (a last line cut short has none); `None` once the output
    /// has ended. Fails the test if no line comes within [`WAIT_DEADLINE`].
    pub fn next_line(&mut self) -> Option<String> {
        match self.lines.recv_timeout(WAIT_DEADLINE) {
            Ok(line) => {
                self.seen.push_str(&line);
                Some(line)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "the child printed nothing for {WAIT_DEADLINE:?}; its output:\n{}",
                    self.seen
                )
            }
        }
    }

    /// Reads lines until one ends with `marker` (the test harness may print its "test ... "
    /// before the child's first line, on the same line); fails the test if the output ends
    /// first.
    pub fn wait_for(&mut self, marker: &str) {
        loop {
            match self.next_line() {
                Some(line) if line.trim_end().ends_with(marker) => return,
                Some(_) => {}
                None => panic!("the child's output ended before {marker}:\n{}", self.seen),
            }
        }
    }

    /// The rest of the output, to its end.
    pub fn rest(&mut self) -> String {
        let mut rest = String::new();
        while let Some(line) = self.next_line() {
            rest.push_str(&line);
        }
        rest
    }

    /// Everything read so far.
    pub fn seen(&self) -> &str {
        &self.seen
    }
}
