"""The account's leads from amoCRM's API, page by page: blocking (``fetch_leads``) and awaited
(``afetch_leads``), for the sync and the async views."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

PAGE_SIZE = 250  # amoCRM's largest page: the fewest calls under its 7 requests per second
MAX_PAGES = 100  # a bound on following links we did not write


def fetch_leads(client: httpx.Client, host: str, auth: httpx.Auth) -> list[dict[str, Any]]:
    """Every lead of the account at ``host``, following amoCRM's ``_links.next``.

    Raises:
        httpx.HTTPError: amoCRM could not be reached, or refused.
        amo_oauth.ReauthorizationRequired: the tokens were revoked (from ``auth``).
    """
    url: str | None = _first_page(host)
    found: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        if url is None:
            break
        response = client.get(url, auth=auth)
        url = _read_page(response, host, found)
    return found


async def afetch_leads(
    client: httpx.AsyncClient, host: str, auth: httpx.Auth
) -> list[dict[str, Any]]:
    """``fetch_leads``, awaited."""
    url: str | None = _first_page(host)
    found: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        if url is None:
            break
        response = await client.get(url, auth=auth)
        url = _read_page(response, host, found)
    return found


def _first_page(host: str) -> str:
    return f"https://{host}/api/v4/leads?limit={PAGE_SIZE}"


def _read_page(response: httpx.Response, host: str, found: list[dict[str, Any]]) -> str | None:
    """Add the page's leads to ``found``; the next page's URL, or None."""
    if response.status_code == 204:  # amoCRM's "no leads": an empty body
        return None
    response.raise_for_status()
    page = response.json()
    found += [_summary(lead) for lead in page["_embedded"]["leads"]]
    return _next_page(page, host)


def _summary(lead: dict[str, Any]) -> dict[str, Any]:
    return {"id": lead["id"], "name": lead["name"], "price": lead.get("price")}


def _next_page(page: dict[str, Any], host: str) -> str | None:
    href = page.get("_links", {}).get("next", {}).get("href")
    if not isinstance(href, str):
        return None
    parts = urlsplit(href)
    # The bearer token goes to the account's own host only, whatever a link says.
    return href if (parts.scheme, parts.hostname) == ("https", host) else None
