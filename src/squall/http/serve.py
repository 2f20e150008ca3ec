"""``squall http``: run the gateway until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import ssl
from dataclasses import dataclass

from aiohttp import web

from squall.config import is_loopback
from squall.errors import ConfigError
from squall.http import tokens
from squall.http.app import Gateway, build_app
from squall.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class HttpConfig:
    """How a gateway runs (the flags of ``squall http``)."""

    connect: str
    bind: str = "127.0.0.1:8000"
    tokens: str | None = None
    webhook_secret: str | None = None
    hook_secret: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    auth: str | None = None
    key: str = "gateway"
    insecure: bool = False
    max_body: int = 16 << 20

    def host_port(self) -> tuple[str, int]:
        """``bind`` as (host, port), checked.

        Raises:
            ConfigError: not HOST:PORT, or a non-loopback host without tokens.
        """
        host, _, port = self.bind.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"--bind takes HOST:PORT, as 127.0.0.1:8000, not {self.bind!r}")
        if self.tokens is None and not self.insecure and not is_loopback(f"tcp://{host}:1"):
            raise ConfigError(
                f"refusing to serve {self.bind} without tokens: whoever reaches it can run "
                "code on your workers; make one with `squall token create NAME --out DIR` "
                "and pass --tokens DIR (or --insecure on a network you trust)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        return host, int(port)


async def serve(config: HttpConfig) -> None:
    import squall
    from squall.router.server import forbid_unpickling

    host, port = config.host_port()
    token_set = tokens.Tokens(config.tokens) if config.tokens else None
    secret = config.webhook_secret or (token_set.webhook_secret if token_set else None)
    context = None
    if config.tls_cert and config.tls_key:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(config.tls_cert, config.tls_key)
    forbid_unpickling()  # as the router: nothing a caller or worker sends is unpickled here
    executor = squall.AsyncExecutor(
        config.connect, auth=config.auth, key=config.key, insecure=config.insecure
    )
    await executor.start()
    gateway = Gateway(executor, token_set, secret, config.hook_secret)
    runner = web.AppRunner(build_app(gateway, config.max_body), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=context, backlog=1024)
    await site.start()
    if gateway.deliveries is not None:
        await gateway.deliveries.resume()
    log.info(
        "gateway listening",
        url=f"{'https' if context else 'http'}://{config.bind}",
        router=config.connect,
        tokens=token_set is not None,
        webhooks=secret is not None,
        unpickling="disabled",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("gateway stopping")
        if gateway.deliveries is not None:
            await gateway.deliveries.close()
        await runner.cleanup()
        await executor.aclose(cancel_futures=True)
