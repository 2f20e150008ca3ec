"""The HTTP gateway (``squall http``): squall's named functions over a JSON API.

:mod:`squall.http.app` serves the API (docs/http.md) on aiohttp, as a client of the router
through :class:`squall.AsyncExecutor`; :mod:`squall.http.tokens` holds the bearer tokens and
the webhook signatures; :mod:`squall.http.webhooks` delivers the callbacks the router keeps.
Installed with the ``http`` extra.
"""
