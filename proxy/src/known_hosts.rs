//! Host keys the laptop already trusts, from OpenSSH `known_hosts` files.
//!
//! The session-bind message names a host *key*, never a host name, so a
//! policy rule for `github.com` means "the keys pinned for github.com". We
//! read them the way OpenSSH does: comma-separated patterns with `*`, `?` and
//! `!` negation, `[host]:port` for non-default ports, hashed names
//! (`|1|salt|HMAC-SHA1`, Debian's default), and `@revoked` lines that cancel
//! a key. `@cert-authority` lines name CAs whose host certificates are
//! trusted for the hosts they match.

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use ssh_key::known_hosts::{Entry, HostPatterns, KnownHosts, Marker};
use ssh_key::public::KeyData;

/// The files OpenSSH reads by default, for `home`.
#[must_use]
pub fn default_files(home: Option<&Path>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(h) = home {
        files.push(h.join(".ssh/known_hosts"));
        files.push(h.join(".ssh/known_hosts2"));
    }
    files.push(PathBuf::from("/etc/ssh/ssh_known_hosts"));
    files
}

/// `host` or `host:port` as known_hosts writes it: `[host]:port` unless 22.
#[must_use]
pub fn lookup_name(host_port: &str) -> String {
    match host_port.rsplit_once(':') {
        Some((host, port)) if port != "22" && !host.is_empty() && port.parse::<u16>().is_ok() => {
            format!("[{host}]:{port}")
        }
        Some((host, "22")) => host.to_owned(),
        _ => host_port.to_owned(),
    }
}

/// The entries of the known_hosts files, read and parsed once per request
/// (missing files and unparsable lines are skipped, as OpenSSH does).
#[derive(Debug, Default)]
pub struct HostKeys {
    entries: Vec<Entry>,
}

impl HostKeys {
    /// Reads `files`.
    #[must_use]
    pub fn load(files: &[PathBuf]) -> Self {
        let mut entries = Vec::new();
        for file in files {
            if let Ok(text) = std::fs::read_to_string(file) {
                entries.extend(KnownHosts::new(&text).filter_map(Result::ok));
            }
        }
        Self { entries }
    }

    /// The keys pinned for `host_port`, less any `@revoked` key.
    #[must_use]
    pub fn pinned_keys(&self, host_port: &str) -> Vec<KeyData> {
        let name = lookup_name(host_port);
        let mut keys = Vec::new();
        let mut revoked = Vec::new();
        for entry in &self.entries {
            collect(entry, &name, &mut keys, &mut revoked);
        }
        keys.retain(|k| !revoked.contains(k));
        keys
    }

    /// Whether an `@cert-authority` line for `host_port` names `ca`, and
    /// neither `ca` nor the certified `key` is `@revoked` for it.
    #[must_use]
    pub fn trusts_ca(&self, host_port: &str, ca: &KeyData, key: &KeyData) -> bool {
        let name = lookup_name(host_port);
        let mut trusted = false;
        for entry in &self.entries {
            if !matches_host(entry.host_patterns(), &name) {
                continue;
            }
            let k = entry.public_key().key_data();
            match entry.marker() {
                Some(Marker::Revoked) if k == ca || k == key => return false,
                Some(Marker::CertAuthority) if k == ca => trusted = true,
                _ => {}
            }
        }
        trusted
    }

    /// The CA keys of `@cert-authority` lines for `host_port`, less any
    /// `@revoked` key.
    #[must_use]
    pub fn cert_authorities(&self, host_port: &str) -> Vec<KeyData> {
        let name = lookup_name(host_port);
        let mut cas = Vec::new();
        for entry in &self.entries {
            if entry.marker() == Some(&Marker::CertAuthority)
                && matches_host(entry.host_patterns(), &name)
            {
                cas.push(entry.public_key().key_data().clone());
            }
        }
        cas.retain(|ca| self.trusts_ca(host_port, ca, ca));
        cas
    }

    /// Every plain name `key` is listed under, in policy form (`host` or
    /// `host:port`; patterns such as `*.corp` are kept as written). Hashed
    /// names cannot be listed; the caller adds the hosts of rules that pin
    /// the key.
    #[must_use]
    pub fn names_for_key(&self, key: &KeyData) -> Vec<String> {
        let mut names = Vec::new();
        for entry in &self.entries {
            if entry.marker().is_some() || entry.public_key().key_data() != key {
                continue;
            }
            if let HostPatterns::Patterns(list) = entry.host_patterns() {
                names.extend(
                    list.iter()
                        .filter(|p| !p.starts_with('!'))
                        .map(|p| policy_form(p)),
                );
            }
        }
        names.sort();
        names.dedup();
        names
    }
}

/// `[host]:port` → `host:port`, lower-cased, as policy rules write hosts.
fn policy_form(pattern: &str) -> String {
    let p = pattern.to_ascii_lowercase();
    match p.strip_prefix('[').and_then(|r| r.split_once("]:")) {
        Some((host, port)) => format!("{host}:{port}"),
        None => p,
    }
}

fn collect(entry: &Entry, name: &str, keys: &mut Vec<KeyData>, revoked: &mut Vec<KeyData>) {
    let key = entry.public_key().key_data().clone();
    match entry.marker() {
        Some(Marker::Revoked) => revoked.push(key),
        Some(Marker::CertAuthority) => {}
        None if matches_host(entry.host_patterns(), name) => keys.push(key),
        None => {}
    }
}

fn matches_host(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                return false;
            };
            // OpenSSH hashes the lower-cased name.
            mac.update(name.to_ascii_lowercase().as_bytes());
            mac.verify_slice(hash).is_ok()
        }
        HostPatterns::Patterns(list) => {
            let lower = name.to_ascii_lowercase();
            let mut positive = false;
            for p in list {
                let (negated, pat) = p
                    .strip_prefix('!')
                    .map_or((false, p.as_str()), |rest| (true, rest));
                if glob(&pat.to_ascii_lowercase(), &lower) {
                    if negated {
                        return false;
                    }
                    positive = true;
                }
            }
            positive
        }
    }
}

/// OpenSSH's `match_pattern`: `*` any run, `?` one character.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB3F8sXLeN4YWpGVp0nlMVH8sQ1w6sYeEJbHLDoWtSyX";

    fn key(line: &str) -> KeyData {
        line.parse::<ssh_key::PublicKey>()
            .map(|k| k.key_data().clone())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn with_file(text: &str) -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = dir.path().join("known_hosts");
        std::fs::write(&f, text).unwrap_or_else(|e| panic!("{e}"));
        let files = vec![f, dir.path().join("absent")];
        (dir, files)
    }

    #[test]
    fn plain_patterns_ports_and_negation() {
        let text = format!(
            "github.com,140.82.112.3 {KEY_A}\n[git.local]:2222 {KEY_B}\n*.corp,!evil.corp {KEY_B}\nnot a valid line\n"
        );
        let (_d, files) = with_file(&text);
        assert_eq!(
            HostKeys::load(&files).pinned_keys("github.com"),
            vec![key(KEY_A)]
        );
        assert_eq!(
            HostKeys::load(&files).pinned_keys("GitHub.com:22"),
            vec![key(KEY_A)]
        );
        assert_eq!(
            HostKeys::load(&files).pinned_keys("git.local:2222"),
            vec![key(KEY_B)]
        );
        assert!(HostKeys::load(&files).pinned_keys("git.local").is_empty());
        assert_eq!(
            HostKeys::load(&files).pinned_keys("a.corp"),
            vec![key(KEY_B)]
        );
        assert!(HostKeys::load(&files).pinned_keys("evil.corp").is_empty());
        assert!(HostKeys::load(&files).pinned_keys("example.org").is_empty());
    }

    #[test]
    fn hashed_names_and_revocation() {
        // `ssh-keygen -H` form of "github.com" with salt 0x00..: computed here.
        let salt = [1u8; 20];
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&salt).unwrap_or_else(|e| panic!("{e}"));
        mac.update(b"github.com");
        let hash = mac.finalize().into_bytes();
        use base64ct::Encoding;
        let line = format!(
            "|1|{}|{} {KEY_A}\n",
            base64ct::Base64::encode_string(&salt),
            base64ct::Base64::encode_string(&hash)
        );
        let (_d, files) = with_file(&line);
        assert_eq!(
            HostKeys::load(&files).pinned_keys("github.com"),
            vec![key(KEY_A)]
        );
        assert!(HostKeys::load(&files).pinned_keys("gitlab.com").is_empty());
        let (_d, files) = with_file(&format!("{line}@revoked * {KEY_A}\n"));
        assert!(HostKeys::load(&files).pinned_keys("github.com").is_empty());
    }

    #[test]
    fn names_a_key_is_known_under() {
        let text = format!(
            "dev.corp,Prod.corp,!x.corp {KEY_A}\n[git.local]:2222 {KEY_A}\nother {KEY_B}\n@revoked evil {KEY_A}\n"
        );
        let (_d, files) = with_file(&text);
        assert_eq!(
            HostKeys::load(&files).names_for_key(&key(KEY_A)),
            vec!["dev.corp", "git.local:2222", "prod.corp"]
        );
    }

    #[test]
    fn cert_authorities_and_their_revocation() {
        let text = format!("@cert-authority *.corp {KEY_A}\ngit.corp {KEY_B}\n");
        let (_d, files) = with_file(&text);
        let keys = HostKeys::load(&files);
        assert!(keys.trusts_ca("git.corp", &key(KEY_A), &key(KEY_B)));
        assert!(
            !keys.trusts_ca("git.corp", &key(KEY_B), &key(KEY_B)),
            "a plain key is no CA"
        );
        assert!(!keys.trusts_ca("example.org", &key(KEY_A), &key(KEY_B)));
        assert_eq!(keys.cert_authorities("a.corp"), vec![key(KEY_A)]);
        assert!(
            keys.pinned_keys("a.corp").is_empty(),
            "a CA pins no key by itself"
        );
        let (_d, files) = with_file(&format!("{text}@revoked * {KEY_B}\n"));
        assert!(!HostKeys::load(&files).trusts_ca("git.corp", &key(KEY_A), &key(KEY_B)));
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("*", "x", true),
            ("a*c", "abbc", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*.x", "x", false),
        ] {
            assert_eq!(glob(p, t), want, "{p} {t}");
        }
    }
}
