//! End to end: the README's `[http.openai]` and `[http.anthropic]` rules and
//! its `OPENAI_BASE_URL`/`ANTHROPIC_BASE_URL` lines, taken from README.md
//! as written, with the official `openai` and `anthropic` Python SDKs in the
//! workspace: the real key reaches the upstream, the SDKs' placeholder never
//! does. Only the upstream URL (a local HTTPS server with a private CA,
//! answering as [`nexus_e2e::llm`]) and the key source are swapped in.
//!
//! Without the SDKs (`pip install openai anthropic`, what `.ci/run` does)
//! the test says SKIPPED, and fails under `CI=true`.

use nexus_e2e::llm::FINAL_PREFIX;
use nexus_e2e::upstream::Upstream;
use nexus_e2e::{Must, paired, repo_root, run_to_end, shim_binary};

const OPENAI_KEY: &str = "sk-e2e-sdk-openai-90a1";
const ANTHROPIC_KEY: &str = "sk-ant-e2e-sdk-77b2";

/// Every call each SDK makes: plain and streamed, each API shape.
const SCRIPT: &str = r#"
import anthropic, openai
o = openai.OpenAI()
msgs = [{"role": "user", "content": "hi"}]
print(o.chat.completions.create(model="gpt-4o", messages=msgs).choices[0].message.content)
text = ""
for chunk in o.chat.completions.create(model="gpt-4o", messages=msgs, stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
print(text)
print(o.responses.create(model="gpt-4o", input="hi").output_text)
a = anthropic.Anthropic()
print(a.messages.create(model="claude-x", max_tokens=16, messages=msgs).content[0].text)
with a.messages.stream(model="claude-x", max_tokens=16, messages=msgs) as s:
    print(s.get_final_text())
"#;

/// The README's fenced block holding `needle`.
fn readme_block(readme: &str, fence: &str, needle: &str) -> String {
    readme
        .split("```")
        .filter_map(|b| b.strip_prefix(fence))
        .find(|b| b.contains(needle))
        .unwrap_or_else(|| panic!("README.md has no ```{fence} block with {needle}"))
        .to_owned()
}

/// `text` with `from` replaced by `to`, which must be there.
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "README.md no longer has {from:?}");
    text.replace(from, to)
}

#[test]
fn the_readme_rules_give_the_official_sdks_the_real_key_only() {
    if let Err(e) = run_to_end(
        std::process::Command::new("python3").args(["-c", "import openai, anthropic"]),
        None,
    )
    .exit_code
    .filter(|c| *c == 0)
    .ok_or("the openai and anthropic Python SDKs are missing: pip install openai anthropic")
    {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{e}");
        eprintln!("SKIPPED: {e}");
        return;
    }
    let readme = std::fs::read_to_string(repo_root().join("README.md")).must("reading README.md");
    let openai = Upstream::start("api.openai.com").must("starting an upstream");
    let anthropic = Upstream::start("api.anthropic.com").must("starting an upstream");
    let (ws, laptop) = paired();
    let mut policy = readme_block(&readme, "toml", "[http.anthropic]");
    for (name, up) in [("openai", &openai), ("anthropic", &anthropic)] {
        let ca = laptop.home().join(format!("{name}-ca.pem"));
        up.write_ca(&ca).must("writing an upstream's CA");
        policy = swap(
            &policy,
            &format!("upstream = \"https://api.{name}.com\""),
            &format!("upstream = \"{}\"\nca_file = {:?}", up.url(), ca),
        );
        policy = swap(
            &policy,
            &format!("source = \"keyring:nexus/{name}\""),
            &format!("source = \"env:E2E_{}_KEY\"", name.to_uppercase()),
        );
    }
    let policy = laptop.write_policy(&format!("version = 1\n\n{policy}"));
    let _proxy = laptop.run(
        &ws,
        "dev",
        &policy,
        &[
            ("E2E_OPENAI_KEY", OPENAI_KEY),
            ("E2E_ANTHROPIC_KEY", ANTHROPIC_KEY),
        ],
    );

    let exports: Vec<&str> = readme
        .lines()
        .filter(|l| {
            l.starts_with("export OPENAI_BASE_URL=") || l.starts_with("export ANTHROPIC_BASE_URL=")
        })
        .collect();
    assert_eq!(exports.len(), 2, "README.md's export lines: {exports:?}");
    let mut cmd = ws.command_on_host("sh");
    cmd.arg("-c")
        .arg(format!(
            "set -e; eval \"$('{}' env)\"; {}; exec python3 -c \"$E2E_SCRIPT\"",
            shim_binary().display(),
            exports.join("; ")
        ))
        .env("NEXUS_STATE_DIR", ws.state_dir())
        .env("E2E_SCRIPT", SCRIPT);
    let out = run_to_end(&mut cmd, None);
    out.ok();
    assert_eq!(
        out.stdout.matches(FINAL_PREFIX).count(),
        5,
        "five answers\n{out}"
    );

    for (up, header, want) in [
        (&openai, "authorization", format!("Bearer {OPENAI_KEY}")),
        (&anthropic, "x-api-key", ANTHROPIC_KEY.to_owned()),
    ] {
        let seen = up.requests();
        assert!(seen.len() >= 2, "{seen:?}");
        for r in &seen {
            assert_eq!(
                r.header(header),
                Some(want.as_bytes()),
                "{} {}",
                r.method,
                r.path
            );
            let creds: Vec<&String> = r
                .headers
                .iter()
                .filter(|(n, _)| ["authorization", "x-api-key"].contains(&n.as_str()))
                .map(|(n, _)| n)
                .collect();
            assert_eq!(creds, [header], "one credential header on {}", r.path);
            for (name, value) in &r.headers {
                assert!(
                    !String::from_utf8_lossy(value).contains("placeholder"),
                    "the placeholder reached the upstream in {name} of {}",
                    r.path
                );
            }
        }
    }
}
