//! The OS credential store, chosen per platform through keyring-core:
//! Keychain on macOS, the kernel's keyutils on Linux (works headless: no
//! D-Bus, no desktop session), and none elsewhere (env, file and command
//! sources still work).
//!
//! On Linux the keyutils store keeps entries in the user's *persistent*
//! keyring, reached through the process's session keyring. A process started
//! outside a login session (a service, CI, `sudo`) has no usable session
//! keyring, so we join a fresh one first. That is the only `unsafe` in this
//! crate: one `keyctl` system call with no pointers passed.

use std::sync::OnceLock;

use anyhow::{Result, anyhow};

static STORE: OnceLock<Result<(), String>> = OnceLock::new();

/// Installs the platform's default store once per process.
///
/// # Errors
/// When the platform has no supported store or it cannot be opened.
pub fn init() -> Result<()> {
    STORE
        .get_or_init(|| platform_store().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

#[cfg(target_os = "linux")]
fn platform_store() -> Result<()> {
    join_session_keyring()?;
    let store = linux_keyutils_keyring_store::Store::new()
        .map_err(|e| anyhow!("opening the keyutils store: {e}"))?;
    keyring_core::set_default_store(store);
    Ok(())
}

#[cfg(target_os = "macos")]
fn platform_store() -> Result<()> {
    let store = apple_native_keyring_store::keychain::Store::new()
        .map_err(|e| anyhow!("opening the macOS Keychain: {e}"))?;
    keyring_core::set_default_store(store);
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn platform_store() -> Result<()> {
    Err(anyhow!(
        "no keyring store is supported on this platform yet; use env:, file: or command: token sources"
    ))
}

/// `keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)`: replace this process's
/// session keyring with a new anonymous one, to which the store then links
/// the user's persistent keyring.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn join_session_keyring() -> Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl with JOIN_SESSION_KEYRING takes one pointer argument,
    // the keyring name, and NULL is documented to mean "a new anonymous
    // keyring". No memory of ours is read or written; the call only changes
    // this process's keyring credentials.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if rc < 0 {
        return Err(anyhow!(
            "joining a session keyring: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Service name of the entries `secret set` writes (`nexus/NAME`).
pub const SERVICE: &str = "nexus";
