//! Claude Code: the MCP server at user scope in `~/.claude.json`
//! (`mcpServers.nexus`, as `claude mcp add --scope user` writes it), and in
//! `~/.claude/settings.json` the API (`env`) and, unless `--ask`, the
//! permission to call `nexus` tools (`claude -p` refuses MCP tools that are
//! not allowed). `$CLAUDE_CONFIG_DIR` moves both files.

use std::path::PathBuf;

use super::json::Json;
use super::{EditFn, Home, MCP_NAME, PLACEHOLDER_KEY, Wiring};

/// The environment setup owns in `settings.json`.
const ENV_KEYS: [&str; 3] = [
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
];

/// The permission rule for every tool of the `nexus` server.
const ALLOW_RULE: &str = "mcp__nexus__*";

pub(super) fn edits(home: &Home) -> Vec<(PathBuf, EditFn)> {
    let (state, settings) = match &home.claude_dir {
        Some(dir) => (dir.join(".claude.json"), dir.join("settings.json")),
        None => (
            home.home.join(".claude.json"),
            home.home.join(".claude/settings.json"),
        ),
    };
    vec![(state, edit_state), (settings, edit_settings)]
}

/// `~/.claude.json`: `mcpServers.nexus`.
fn edit_state(text: &str, wiring: Option<&Wiring>) -> Result<String, String> {
    let mut doc = Json::parse(text)?;
    let servers = doc.object_at("mcpServers")?;
    match wiring {
        Some(w) => {
            let command = w.mcp_command();
            let server = Json::Object(vec![
                ("type".into(), Json::str("stdio")),
                ("command".into(), Json::str(&command[0])),
                ("args".into(), Json::strings(&command[1..])),
                ("env".into(), Json::Object(Vec::new())),
            ]);
            servers.set(MCP_NAME, server);
        }
        None => servers.remove(MCP_NAME),
    }
    doc.prune("mcpServers");
    doc.render()
}

/// `~/.claude/settings.json`: `env` and `permissions.allow`.
fn edit_settings(text: &str, wiring: Option<&Wiring>) -> Result<String, String> {
    let mut doc = Json::parse(text)?;
    let env = doc.object_at("env")?;
    match wiring {
        Some(w) => {
            env.set("ANTHROPIC_BASE_URL", Json::str(&w.api()?.url));
            // Sent as `Authorization: Bearer`, which the laptop replaces;
            // unlike ANTHROPIC_API_KEY it raises no "use this key?" prompt.
            env.set("ANTHROPIC_AUTH_TOKEN", Json::str(PLACEHOLDER_KEY));
            env.set("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", Json::str("1"));
        }
        None => ENV_KEYS.iter().for_each(|k| env.remove(k)),
    }
    doc.prune("env");
    let permissions = doc.object_at("permissions")?;
    let allow = match permissions.get_mut("allow") {
        Some(list) => list,
        None => {
            permissions.set("allow", Json::Array(Vec::new()));
            permissions.get_mut("allow").ok_or("permissions.allow")?
        }
    };
    let Json::Array(rules) = allow else {
        return Err("`permissions.allow` is not a list; fix it by hand".into());
    };
    let rule = Json::str(ALLOW_RULE);
    rules.retain(|r| *r != rule);
    if wiring.is_some_and(|w| !w.ask) {
        rules.push(rule);
    }
    permissions.prune("allow");
    doc.prune("permissions");
    doc.render()
}

#[cfg(test)]
mod tests {
    use super::super::testing::round_trip;
    use super::*;

    #[test]
    fn the_mcp_server_goes_in_at_user_scope_beside_other_settings() {
        let original = "{\n  \"numStartups\": 3,\n  \"mcpServers\": {\n    \"other\": {\n      \"command\": \"x\"\n    }\n  },\n  \"theme\": \"dark\"\n}\n";
        let set = round_trip(edit_state, original, false);
        let doc: serde_json::Value = serde_json::from_str(&set).unwrap_or_default();
        assert_eq!(doc["mcpServers"]["other"]["command"], "x");
        assert_eq!(
            doc["mcpServers"]["nexus"]["command"],
            "/usr/local/bin/nexus-shim"
        );
        assert_eq!(
            doc["mcpServers"]["nexus"]["args"],
            serde_json::json!(["--state-dir", "/home/dev/.local/state/nexus", "mcp"])
        );
        assert_eq!(doc["theme"], "dark");
    }

    #[test]
    fn settings_get_the_api_and_the_permission() {
        let original = "{\n  \"env\": {\n    \"FOO\": \"bar\"\n  },\n  \"permissions\": {\n    \"allow\": [\n      \"Bash(ls:*)\"\n    ]\n  }\n}\n";
        let set = round_trip(edit_settings, original, false);
        let doc: serde_json::Value = serde_json::from_str(&set).unwrap_or_default();
        assert_eq!(
            doc["env"]["ANTHROPIC_BASE_URL"],
            "http://127.0.0.1:4000/cap/anthropic"
        );
        assert_eq!(doc["env"]["ANTHROPIC_AUTH_TOKEN"], PLACEHOLDER_KEY);
        assert_eq!(doc["env"]["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"], "1");
        assert_eq!(doc["env"]["FOO"], "bar");
        assert_eq!(
            doc["permissions"]["allow"],
            serde_json::json!(["Bash(ls:*)", ALLOW_RULE])
        );
    }

    #[test]
    fn ask_keeps_the_agents_own_prompt() {
        let set = round_trip(edit_settings, "", true);
        assert!(!set.contains(ALLOW_RULE), "{set}");
        assert!(!set.contains("permissions"), "{set}");
        // Switching to --ask takes the rule back out.
        let allowed = edit_settings("", Some(&super::super::testing::wiring(false)));
        let asked =
            allowed.and_then(|t| edit_settings(&t, Some(&super::super::testing::wiring(true))));
        assert_eq!(asked.map(|t| t.contains(ALLOW_RULE)), Ok(false));
    }

    #[test]
    fn a_permissions_allow_that_is_not_a_list_is_refused() {
        let w = super::super::testing::wiring(false);
        let got = edit_settings("{\"permissions\": {\"allow\": \"x\"}}", Some(&w));
        assert!(got.is_err_and(|e| e.contains("permissions.allow")));
    }
}
