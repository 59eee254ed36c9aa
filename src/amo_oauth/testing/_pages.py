"""The fake's HTML: the consent page and its error pages. Small, valid and accessible."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
</head>
<body>
<main>
<h1>{title}</h1>
{content}
</main>
</body>
</html>
"""


def page(title: str, content_html: str) -> bytes:
    """Wrap already-escaped `content_html` into a full document titled `title`."""
    return _PAGE.format(title=escape(title), content=content_html).encode("utf-8")


def message_page(title: str, message: str) -> bytes:
    """A page with one paragraph of plain text."""
    return page(title, f"<p>{escape(message)}</p>")


Fields = Mapping[str, str] | Sequence[tuple[str, str]]
"""A form's hidden fields: a mapping, or pairs when a name repeats (``scopes[]``)."""


def _hidden_inputs(fields: Fields) -> str:
    pairs = fields.items() if isinstance(fields, Mapping) else fields
    return "\n".join(
        f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
        for name, value in pairs
    )


def _form(action: str, button_id: str, label: str, fields: Fields, extra: str = "") -> str:
    # GET forms: the "button" is then also a plain link a test can follow without a browser.
    return (
        f'<form method="get" action="{escape(action)}">\n{_hidden_inputs(fields)}\n{extra}'
        f'<button type="submit" id="{button_id}">{escape(label)}</button>\n</form>'
    )


def _account_select(choices: Sequence[tuple[str, str]]) -> str:
    # The first choice is selected: a form sent without looking picks the default account.
    options = "\n".join(
        f'<option value="{escape(value)}">{escape(label)}</option>' for value, label in choices
    )
    return (
        '<label for="account">Account</label>\n'
        f'<select id="account" name="account">\n{options}\n</select>\n'
    )


def consent_page(
    account_name: str,
    account_host: str,
    fields: Mapping[str, str],
    choices: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The "Allow access?" page: an Allow (#allow) and a Deny (#deny) button.

    Args:
        account_name: shown to the user, as amoCRM shows the account being connected.
        account_host: the account's host, shown next to the name.
        fields: the query to carry over to /oauth/allow and /oauth/deny (client_id, state, mode).
        choices: (account id, label) of every account, when the user has several to pick from
            (a select in the Allow form, the default account first); empty: no choice.
    """
    if choices:
        intro = "<p>An integration asks for access to one of your accounts.</p>"
    else:
        intro = (
            f"<p>An integration asks for access to the account <strong>{escape(account_name)}"
            f"</strong> ({escape(account_host)}).</p>"
        )
    buttons = (
        _form("/oauth/allow", "allow", "Allow", fields, _account_select(choices) if choices else "")
        + "\n"
        + _form("/oauth/deny", "deny", "Deny", fields)
    )
    return page("Grant access to your amoCRM account?", intro + "\n" + buttons)


def install_page(
    product: str,
    description: str,
    scopes: Sequence[str],
    fields: Sequence[tuple[str, str]],
    choices: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The consent page of a metadata-mode site button (§7): the product's name, description
    and scopes, and "Allow" (#allow), which installs it as a NEW integration.

    Args:
        fields: the button's query to carry over to the install (repeated ``scopes[]`` too).
        choices: as for `consent_page`.
    """
    intro = (
        f"<p><strong>{escape(product)}</strong> asks to be installed in your account as a new "
        f"integration.</p>\n<p>{escape(description)}</p>\n"
        f"<p>Scopes: {escape(', '.join(scopes))}</p>"
    )
    extra = _account_select(choices) if choices else ""
    allow = _form("/oauth/install", "allow", "Allow", fields, extra)
    return page("Install this integration?", intro + "\n" + allow)


def keys_page(account_name: str, host: str, token: str, code: str, action: str) -> bytes:
    """The "Keys and scopes" tab (§8): a long-lived token and an authorization code to copy,
    and what an admin can do to that token: revoke it (#revoke), or end it now (#expire)."""
    content = (
        f'<p>Account: {escape(account_name)} (<code id="host">{escape(host)}</code>)</p>\n'
        '<label for="long-lived-token">Long-lived token (a year; shown once)</label>\n'
        '<textarea id="long-lived-token" readonly rows="6" cols="80">'
        f"{escape(token)}</textarea>\n"
        + _post_form(action, "revoke", "Revoke this token", {"do": "revoke", "token": token})
        + _post_form(action, "expire", "Expire it now", {"do": "expire", "token": token})
        + '<label for="authorization-code">Authorization code (20 minutes, single use)</label>\n'
        '<textarea id="authorization-code" readonly rows="4" cols="80">'
        f"{escape(code)}</textarea>\n"
    )
    return page("Keys and scopes", content)


def _post_form(action: str, button_id: str, label: str, fields: Mapping[str, str]) -> str:
    # POST: it changes what amoCRM accepts, and the token stays out of URLs and logs.
    return (
        f'<form method="post" action="{escape(action)}">\n{_hidden_inputs(fields)}\n'
        f'<button type="submit" id="{button_id}">{escape(label)}</button>\n</form>\n'
    )


SERVER_ERROR_PAGE = message_page("500 Internal Server Error", "Something went wrong.")
HTML_INSTEAD_OF_JSON = message_page("amoCRM", "Technical works are in progress.")

# An nginx-style "403 Forbidden" page, as a front proxy answers a blocked client (protocol §9:
# "repeated violations block the client's IP (403 on every request)"). Not our page template:
# the point is a body that is neither JSON nor the fake's own HTML.
NGINX_FORBIDDEN = (
    b"<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n"
    b"<center><h1>403 Forbidden</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
