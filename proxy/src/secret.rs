//! `secret set NAME`: store a value in the OS keyring as `nexus/NAME`, read
//! from stdin or typed at a prompt that does not echo.

use std::io::{BufRead, IsTerminal, Read, Write};

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

use crate::keyring::SERVICE;

/// Reads the value and stores it.
pub fn set(name: &str) -> Result<()> {
    validate(name)?;
    let value = if std::io::stdin().is_terminal() {
        prompt(name)?
    } else {
        read_stdin()?
    };
    if value.is_empty() {
        bail!("empty value; nothing stored");
    }
    crate::keyring::init()?;
    let entry = keyring_core::Entry::new(SERVICE, name)
        .with_context(|| format!("keyring entry {SERVICE}/{name}"))?;
    entry
        .set_secret(value.as_bytes())
        .with_context(|| format!("storing keyring entry {SERVICE}/{name}"))?;
    eprintln!(
        "stored keyring entry {SERVICE}/{name}; declare it with: source = \"keyring:{SERVICE}/{name}\""
    );
    Ok(())
}

/// Removes the entry.
pub fn delete(name: &str) -> Result<()> {
    validate(name)?;
    crate::keyring::init()?;
    let entry = keyring_core::Entry::new(SERVICE, name)
        .with_context(|| format!("keyring entry {SERVICE}/{name}"))?;
    match entry.delete_credential() {
        Ok(()) => Ok(()),
        Err(keyring_core::Error::NoEntry) => bail!("no keyring entry {SERVICE}/{name}"),
        Err(e) => Err(e).with_context(|| format!("deleting keyring entry {SERVICE}/{name}")),
    }
}

fn validate(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("invalid secret name {name:?}: use 1-64 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// All of stdin, minus one trailing newline (as `echo VALUE |` adds).
fn read_stdin() -> Result<Zeroizing<String>> {
    let mut value = Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut value)
        .context("reading the value from stdin")?;
    strip_newline(&mut value);
    Ok(value)
}

fn strip_newline(v: &mut String) {
    if v.ends_with('\n') {
        v.pop();
        if v.ends_with('\r') {
            v.pop();
        }
    }
}

#[cfg(unix)]
fn prompt(name: &str) -> Result<Zeroizing<String>> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    eprint!("value for {SERVICE}/{name} (input hidden): ");
    std::io::stderr().flush().ok();
    let saved = tcgetattr(&stdin).context("reading terminal settings")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&stdin, OptionalActions::Flush, &quiet).context("turning off echo")?;
    let mut value = Zeroizing::new(String::new());
    let read = stdin.lock().read_line(&mut value);
    let restored = tcsetattr(&stdin, OptionalActions::Flush, &saved);
    eprintln!();
    read.context("reading the value")?;
    restored.context("restoring terminal settings")?;
    strip_newline(&mut value);
    Ok(value)
}

#[cfg(not(unix))]
fn prompt(_name: &str) -> Result<Zeroizing<String>> {
    bail!("no hidden prompt on this platform; pipe the value on stdin instead")
}
