//! Secrets typed or piped in, never taken from the command line (where
//! `ps` and shell history would keep them): stdin when it is a pipe or a
//! file, else a prompt on the terminal with echo off.

use std::io::{IsTerminal, Read};

use zeroize::Zeroizing;

use super::CliError;

/// The most a credential read from stdin may be (a PEM key is ~3 KiB).
const MAX: u64 = 64 * 1024;

/// One secret: all of stdin (trailing line breaks removed), or a line
/// typed at a hidden prompt naming `what`.
pub(crate) fn secret(what: &str) -> Result<Zeroizing<String>, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return prompt(what);
    }
    let mut bytes = Zeroizing::new(Vec::new());
    stdin
        .lock()
        .take(MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::io("cannot read the credential from stdin", e))?;
    if bytes.len() as u64 > MAX {
        return Err(CliError::Usage(format!(
            "the credential on stdin is longer than {MAX} bytes"
        )));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| CliError::Usage("the credential on stdin is not UTF-8 text".into()))?;
    Ok(Zeroizing::new(
        text.trim_end_matches(['\n', '\r']).to_owned(),
    ))
}

/// A line typed with echo off.
fn prompt(what: &str) -> Result<Zeroizing<String>, CliError> {
    eprint!("{what} (input hidden): ");
    let echo = EchoOff::new();
    let mut line = Zeroizing::new(String::new());
    let read = std::io::stdin().read_line(&mut line);
    drop(echo);
    eprintln!();
    read.map_err(|e| CliError::io("cannot read the credential from the terminal", e))?;
    Ok(Zeroizing::new(
        line.trim_end_matches(['\n', '\r']).to_owned(),
    ))
}

/// The terminal's echo switched off until dropped.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: tcgetattr writes into the termios we own; stdin (fd 0) is
        // a terminal here, and a failure leaves the terminal unchanged.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return EchoOff(None);
            }
            let mut quiet = saved;
            quiet.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &quiet) != 0 {
                return EchoOff(None);
            }
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the settings read in `new` on the same fd.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved);
            }
        }
    }
}
