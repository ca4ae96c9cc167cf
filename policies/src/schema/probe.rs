//! A request as `policy explain` and fixtures write it: `key=value`
//! arguments, which each section turns into the action it decides.

/// A string cut for messages.
pub(crate) fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The `key=value` arguments of a probe of tool `tool` (as written:
/// `token` or `tokens`, ...). Only `args` and `ref` may repeat.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProbeArgs<'a> {
    /// The tool or section name, for messages.
    pub tool: &'a str,
    /// The arguments, in the order given.
    pub args: &'a [(String, String)],
}

impl<'a> ProbeArgs<'a> {
    /// The allowed argument keys; only `args` and `ref` may be given more
    /// than once.
    pub(crate) fn check_keys(&self, allowed: &[&str]) -> Result<(), String> {
        for (i, (k, _)) in self.args.iter().enumerate() {
            if !allowed.contains(&k.as_str()) {
                return Err(format!(
                    "--tool {} takes no argument {k:?}; expected {}",
                    self.tool,
                    allowed.join(", ")
                ));
            }
            if !matches!(k.as_str(), "args" | "ref")
                && self.args[..i].iter().any(|(seen, _)| seen == k)
            {
                return Err(format!("--tool {} takes --arg {k}=... once", self.tool));
            }
        }
        Ok(())
    }

    /// The value of argument `key`, if given.
    pub(crate) fn arg(&self, key: &str) -> Option<&'a str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of argument `key`, or an error with an example.
    pub(crate) fn need(&self, key: &str, example: &str) -> Result<&'a str, String> {
        self.arg(key).ok_or_else(|| {
            format!(
                "--tool {} needs --arg {key}=VALUE (e.g. {key}={example})",
                self.tool
            )
        })
    }

    /// Every value of the repeatable argument `key`, in order.
    pub(crate) fn all(&self, key: &str) -> Vec<String> {
        self.args
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }
}
