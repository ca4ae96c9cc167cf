//! OpenCode: `~/.config/opencode/opencode.json` (under `$XDG_CONFIG_HOME`
//! when set): `provider.NAME.options` (`baseURL`, and the placeholder as
//! `apiKey`) for the API's name (`openai` unless `--api`), `mcp.nexus` as a
//! local server, and unless `--ask` `permission."nexus_*" = "allow"`.

use std::path::PathBuf;

use super::json::Json;
use super::{EditFn, Home, MCP_NAME, PLACEHOLDER_KEY, Wiring};

/// The permission key of every tool of the `nexus` server.
const TOOLS: &str = "nexus_*";

pub(super) fn edits(home: &Home) -> Vec<(PathBuf, EditFn)> {
    let config = home
        .xdg_config
        .clone()
        .unwrap_or_else(|| home.home.join(".config"));
    vec![(config.join("opencode/opencode.json"), edit)]
}

fn edit(text: &str, wiring: Option<&Wiring>) -> Result<String, String> {
    let mut doc = Json::parse(text)?;
    let providers = doc.object_at("provider")?;
    // A provider setup wired is the one holding the placeholder: removal
    // finds it whichever `--api` chose it.
    if let Json::Object(entries) = providers {
        for (_, provider) in entries.iter_mut() {
            let options = provider.object_at("options")?;
            if options.get_mut("apiKey") == Some(&mut Json::str(PLACEHOLDER_KEY)) {
                options.remove("apiKey");
                options.remove("baseURL");
            }
            provider.prune("options");
        }
        entries.retain(|(_, p)| *p != Json::Object(Vec::new()));
    }
    if let Some(w) = wiring {
        let api = w.api()?;
        let options = providers.object_at(&api.name)?.object_at("options")?;
        options.set("baseURL", Json::str(&api.v1_url()));
        options.set("apiKey", Json::str(PLACEHOLDER_KEY));
    }
    doc.prune("provider");
    let servers = doc.object_at("mcp")?;
    match wiring {
        Some(w) => servers.set(
            MCP_NAME,
            Json::Object(vec![
                ("type".into(), Json::str("local")),
                ("command".into(), Json::strings(&w.mcp_command())),
                ("enabled".into(), Json::Bool(true)),
            ]),
        ),
        None => servers.remove(MCP_NAME),
    }
    doc.prune("mcp");
    let permission = doc.object_at("permission")?;
    match wiring {
        Some(w) if !w.ask => permission.set(TOOLS, Json::str("allow")),
        _ => permission.remove(TOOLS),
    }
    doc.prune("permission");
    doc.render()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{round_trip, wiring};
    use super::*;

    const ORIGINAL: &str = "{\n  \"$schema\": \"https://opencode.ai/config.json\",\n  \"provider\": {\n    \"ollama\": {\n      \"options\": {\n        \"baseURL\": \"http://localhost:11434/v1\"\n      }\n    }\n  },\n  \"mcp\": {\n    \"docs\": {\n      \"type\": \"local\",\n      \"command\": [\n        \"docs-mcp\"\n      ]\n    }\n  }\n}\n";

    #[test]
    fn the_provider_and_the_mcp_server_merge_into_other_settings() {
        let set = round_trip(edit, ORIGINAL, false);
        let doc: serde_json::Value = serde_json::from_str(&set).unwrap_or_default();
        let options = &doc["provider"]["anthropic"]["options"];
        assert_eq!(options["baseURL"], "http://127.0.0.1:4000/cap/anthropic/v1");
        assert_eq!(options["apiKey"], PLACEHOLDER_KEY);
        assert_eq!(
            doc["provider"]["ollama"]["options"]["baseURL"],
            "http://localhost:11434/v1"
        );
        assert_eq!(
            doc["mcp"]["nexus"]["command"],
            serde_json::json!([
                "/usr/local/bin/nexus-shim",
                "--state-dir",
                "/home/dev/.local/state/nexus",
                "mcp"
            ])
        );
        assert_eq!(doc["mcp"]["docs"]["type"], "local");
        assert_eq!(doc["permission"][TOOLS], "allow");
    }

    #[test]
    fn ask_leaves_the_permission_to_opencode() {
        let set = round_trip(edit, ORIGINAL, true);
        assert!(!set.contains("permission"), "{set}");
    }

    #[test]
    fn another_api_moves_the_wiring() {
        let first = edit("", Some(&wiring(false))).unwrap_or_default();
        let mut w = wiring(false);
        if let Some(api) = w.api.as_mut() {
            api.name = "openai".into();
        }
        let moved = edit(&first, Some(&w)).unwrap_or_default();
        let doc: serde_json::Value = serde_json::from_str(&moved).unwrap_or_default();
        assert!(doc["provider"].get("anthropic").is_none(), "{moved}");
        assert_eq!(
            doc["provider"]["openai"]["options"]["apiKey"],
            PLACEHOLDER_KEY
        );
    }
}
