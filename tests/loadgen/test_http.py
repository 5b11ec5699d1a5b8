"""The raw HTTP/1.1 client: framing variants and the stale keep-alive retry."""

import asyncio
import io
import json

import pytest

from kvharness.loadgen.runner import Runner
from kvharness.loadgen.spec import validate_spec

EVENTS = [b'data: {"choices":[{"index":0,"text":"a"}]}\n\n', b'data: {"choices":[{"index":0,"text":"b"}]}\n\n',
          b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n', b"data: [DONE]\n\n"]


async def serve(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def read_request(reader) -> bool:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    length = int([ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0])
    await reader.readexactly(length)
    return True


def run_against(handler, **over):
    async def go():
        server, port = await serve(handler)
        spec = validate_spec({"base_url": f"http://127.0.0.1:{port}", "model": "m", "max_requests": 4,
                              "pattern": {"kind": "closed", "concurrency": 1},
                              "workload": {"kind": "fixed_context", "context_tokens": 3, "output_tokens": 2}, **over})
        out = io.StringIO()
        runner = Runner(spec, out)
        summary = await runner.run()
        server.close()
        return summary, [json.loads(x) for x in out.getvalue().splitlines()]

    return asyncio.run(go())


@pytest.mark.parametrize("stamps", ["loop", "kernel"])
@pytest.mark.parametrize("framing", ["chunked-split", "content-length", "close"])
def test_framings(framing, stamps):
    async def handler(reader, writer):
        while await read_request(reader):
            body = b"".join(EVENTS)
            if framing == "chunked-split":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for ev in EVENTS:  # a chunk split across writes, with an extension on the size line
                    chunk = b"%x;ext=1\r\n%s\r\n" % (len(ev), ev)
                    writer.write(chunk[:5])
                    await writer.drain()
                    await asyncio.sleep(0.002)
                    writer.write(chunk[5:])
                writer.write(b"0\r\n\r\n")
            elif framing == "content-length":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)
                await writer.drain()
                writer.close()
                return
            await writer.drain()
        writer.close()

    summary, recs = run_against(handler, timestamps=stamps)
    assert summary["n_ok"] == 4, summary["error_classes"]
    assert all(r["output_tokens"] == 2 and len(r["itl_ms"]) == 1 for r in recs)
    if framing == "chunked-split":  # the server sleeps 2 ms inside every event: ITL >= 2 ms either way
        assert all(r["itl_ms"][0] >= 1.5 for r in recs)


@pytest.mark.parametrize("stamps", ["loop", "kernel"])
def test_stale_keepalive_connection_is_retried_once(stamps):
    async def handler(reader, writer):
        if await read_request(reader):  # answer one request, then drop the connection at the next one
            body = b"".join(EVENTS)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        await read_request(reader)
        writer.close()

    summary, recs = run_against(handler, timestamps=stamps)
    assert summary["n_ok"] == 4 and summary["n_errors"] == 0


def test_garbage_status_line_is_a_parse_error():
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    summary, recs = run_against(handler, max_requests=2)
    assert {r["error_class"] for r in recs} == {"parse"}
