"""A real MCP client (the `mcp` Python SDK) driving `nexus-shim mcp` over
stdio, for tests/tests/mcp.rs. Usage: mcp_client.py SHIM STATE_DIR CALLS_JSON

CALLS_JSON is a list of [tool, arguments]; prints one JSON object: the tool
names listed, then each call's {"error": bool, "text": str}.
"""
import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main() -> None:
    shim, state, calls = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    params = StdioServerParameters(
        command=shim,
        args=["mcp", "--state-dir", state, "--wait", os.environ.get("NEXUS_MCP_TEST_WAIT", "10s")],
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            listed = await session.list_tools()
            out = {"tools": {t.name: t.description or "" for t in listed.tools}, "calls": []}
            for name, arguments in calls:
                result = await session.call_tool(name, arguments)
                text = "".join(getattr(c, "text", "") for c in result.content)
                is_error = getattr(result, "is_error", None)
                if is_error is None:
                    is_error = getattr(result, "isError", False)
                out["calls"].append({"error": bool(is_error), "text": text})
    print(json.dumps(out))


asyncio.run(main())
