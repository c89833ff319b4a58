"""Credentials out of everything a run writes: URLs with `user:password@` or signed query parameters.

The full URL of a source row is used in memory for the fetch only; manifests, info JSON, reasons, logs
and the report hold `redact_url(url)`: no userinfo, and the values of secret-bearing query parameters
replaced by MASK (parameter names match case-insensitively, with shell globs such as `x-amz-*`).
`redact_text` does the same for every URL inside free text (ffprobe and yt-dlp messages, tracebacks),
and masks `name=value` pairs of secret parameters even where a message was cut inside a URL.
"""
from __future__ import annotations

import fnmatch
import functools
import re
import urllib.parse
from typing import Any, Iterable

MASK = "REDACTED"
DEFAULT_PARAMS: tuple[str, ...] = (
    "token", "*_token", "sig", "lsig", "signature", "*_signature", "key", "api_key", "apikey", "auth",
    "authorization", "password", "passwd", "pwd", "secret", "*_secret", "credential", "credentials",
    "session", "sessionid", "policy", "key-pair-id", "awsaccesskeyid", "googleaccessid",
    "x-amz-*", "x-goog-*",
)
# A URL in free text: a scheme, then anything up to whitespace, a quote or a bracket.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{1,15}://[^\s'\"<>()\[\]{}`]+")
# `name=value` in free text (a query cut from its URL, a form body): the name and where it starts.
_PAIR = re.compile(r"(?<![\w.%-])([\w.%-]+)=([^&\s'\"<>;,)]*?)(?=[&\s'\"<>;,)]|[:.!?]+(?:\s|$)|$)")
_TRAILING = re.compile(r"[.,:;!?]+$")   # sentence punctuation after a URL is not part of it
# `user:password@host` in free text whose scheme (or more) was cut off.
_USERINFO = re.compile(r"[^\s/@'\"<>]+@(?=[\w.-]+(?::\d+)?(?:[/?#\s]|$))")


@functools.lru_cache(maxsize=64)
def _matcher(params: tuple[str, ...]):
    patterns = [p.lower() for p in params]
    exact = {p for p in patterns if not any(c in p for c in "*?[")}
    globs = [p for p in patterns if p not in exact]
    return lambda name: name in exact or any(fnmatch.fnmatchcase(name, g) for g in globs)


def is_secret_param(name: str, params: Iterable[str] = DEFAULT_PARAMS) -> bool:
    return _matcher(tuple(params))(urllib.parse.unquote_plus(name).strip().lower())


def _redact_pairs(query: str, params: tuple[str, ...]) -> str:
    """`a=1&token=x` -> `a=1&token=REDACTED`; the other pairs keep their exact text."""
    secret = _matcher(params)
    out = []
    for pair in query.split("&"):
        name, sep, value = pair.partition("=")
        if sep and value and secret(urllib.parse.unquote_plus(name).strip().lower()):
            pair = f"{name}={MASK}"
        out.append(pair)
    return "&".join(out)


def redact_url(url: str, params: Iterable[str] = DEFAULT_PARAMS) -> str:
    """`url` without userinfo and with the values of secret query (and fragment) parameters masked.
    Local paths and text that is not a URL come back unchanged."""
    if not isinstance(url, str) or "://" not in url:
        return url
    params = tuple(params)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. a bad IPv6 host: fall back on the free-text rules
        return _redact_loose(url, params)
    netloc = parts.netloc.rpartition("@")[2]
    query = _redact_pairs(parts.query, params) if parts.query else parts.query
    fragment = _redact_pairs(parts.fragment, params) if "=" in parts.fragment else parts.fragment
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query, fragment=fragment))


def _redact_loose(text: str, params: tuple[str, ...]) -> str:
    secret = _matcher(params)

    def pair(m: re.Match) -> str:
        name = urllib.parse.unquote_plus(m.group(1)).strip().lower()
        return f"{m.group(1)}={MASK}" if m.group(2) and secret(name) else m.group(0)

    return _PAIR.sub(pair, _USERINFO.sub("", text))


def redact_text(text: str, params: Iterable[str] = DEFAULT_PARAMS, literals: Iterable[str] = ()) -> str:
    """Every URL inside `text` redacted, secret `name=value` pairs masked, and each of `literals`
    (known secret strings, see `secret_literals`) replaced by MASK."""
    if not isinstance(text, str) or not text:
        return text
    params = tuple(params)
    for literal in sorted(set(literals), key=len, reverse=True):
        if literal:
            text = text.replace(literal, MASK)
    def url(m: re.Match) -> str:
        found = m.group(0)
        tail = _TRAILING.search(found)
        cut = tail.start() if tail else len(found)
        return redact_url(found[:cut], params) + found[cut:]

    text = _URL.sub(url, text)
    return _redact_loose(text, params)


def redact_obj(obj: Any, params: Iterable[str] = DEFAULT_PARAMS, literals: Iterable[str] = ()) -> Any:
    """`obj` (JSON-like) with every string redacted by `redact_text`, keys kept."""
    params, literals = tuple(params), tuple(literals)
    if isinstance(obj, str):
        return redact_text(obj, params, literals)
    if isinstance(obj, dict):
        return {k: redact_obj(v, params, literals) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v, params, literals) for v in obj]
    return obj


def secret_literals(value: str, params: Iterable[str] = DEFAULT_PARAMS, min_length: int = 6) -> set[str]:
    """The secret strings inside one full URL (userinfo, values of secret parameters), raw and
    percent-decoded: messages that quote them outside a URL can be scrubbed too. Very short values
    (`sp=r`) are left to the URL rules: replacing them everywhere would mangle unrelated text."""
    if not isinstance(value, str) or "://" not in value:
        return set()
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        return set()
    found: set[str] = set()
    userinfo = parts.netloc.rpartition("@")[0]
    if userinfo:
        found.add(userinfo)
        found.add(userinfo.partition(":")[2])   # the password; a user name alone is no secret
    for text in (parts.query, parts.fragment):
        for pair in text.split("&"):
            name, sep, val = pair.partition("=")
            if sep and val and is_secret_param(name, params):
                found.add(val)
    found |= {urllib.parse.unquote_plus(s) for s in found}
    return {s for s in found if len(s) >= min_length}


def basic_auth(url: str) -> tuple[str, str | None]:
    """(`url` without userinfo, the `Authorization: Basic` value it carried or None), for clients
    such as urllib that do not read credentials from the URL."""
    import base64

    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, None
    netloc = parts.netloc.rpartition("@")[2]
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), f"Basic {token}"
