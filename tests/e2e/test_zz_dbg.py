import asyncio, time
import aiohttp
from tests.helpers import make_webhook, emit_many, start_daemon
from tests.e2e.test_ops_http import api_url, samples

async def test_dbg(conn, dsn, receiver, daemon_factory):
    await make_webhook(conn, receiver.url, events=["request.create"])
    d = await start_daemon(daemon_factory, dsn)
    base = api_url(d)
    await emit_many(conn, 5)
    await receiver.wait_count(5)
    async with aiohttp.ClientSession() as s:
        for i in range(12):
            async with s.get(base + "/metrics") as r:
                t = await r.text()
            f = samples(t)
            print(time.monotonic(), f[("dispatcher_queue_deliveries", (("state","leased"),))], f[("dispatcher_queue_deliveries", (("state","delivered"),))], await conn.fetchval("select count(*) from delivery where state='delivered'"))
            await asyncio.sleep(1)
