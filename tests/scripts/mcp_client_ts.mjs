// The official TypeScript MCP client (@modelcontextprotocol/sdk) driving
// `nexus-shim mcp` over stdio, for tests/tests/mcp.rs.
// Usage: node mcp_client_ts.mjs SDK_DIR SHIM STATE_DIR
// Prints one JSON object: the tools listed, a tool call's result, and the
// JSON-RPC error codes the client got for an unknown method and for
// parameters of the wrong shape (each answer must carry the request's id,
// or the client would wait until its timeout).
import { pathToFileURL } from "node:url";
import { join } from "node:path";

const [sdk, shim, state] = process.argv.slice(2);
const esm = (p) => import(pathToFileURL(join(sdk, "node_modules/@modelcontextprotocol/sdk/dist/esm", p)).href);
const { Client } = await esm("client/index.js");
const { StdioClientTransport } = await esm("client/stdio.js");
const { z } = await import(pathToFileURL(join(sdk, "node_modules/zod/index.js")).href);

const transport = new StdioClientTransport({
  command: shim,
  args: ["mcp", "--state-dir", state, "--wait", "10s"],
  stderr: "ignore",
});
const client = new Client({ name: "nexus-e2e", version: "1.0.0" });
await client.connect(transport);
const out = {};
out.server = client.getServerVersion()?.name;
out.tools = (await client.listTools()).tools.map((t) => t.name);
const call = await client.callTool({ name: "tool_echo-it", arguments: { args: ["hello"] } });
out.call = { error: Boolean(call.isError), text: call.content.map((c) => c.text ?? "").join("") };
const code = async (request) => {
  try {
    await client.request(request, z.any(), { timeout: 5000 });
    return "answered";
  } catch (e) {
    return e.code ?? String(e);
  }
};
out.unknown_method = await code({ method: "nexus/no-such-method", params: {} });
out.bad_params = await code({ method: "tools/call", params: { name: 5 } });
out.after = (await client.listTools()).tools.length > 0;
await client.close();
console.log(JSON.stringify(out));
