"""``hopcast auth``: API keys, and the security options every serving command shares.

::

    hopcast auth create --name NAME --role ROLE [--role ROLE2]   a new key, printed once
    hopcast auth list                                            the keys (never a secret)
    hopcast auth revoke ID                                       refused from now on

The key file is ``--keys FILE`` (``$HOPCAST_KEYS``); by default ``keys.json`` inside the LMDB
store directory (``--store``), so it sits with the data it guards. A store that is not a
directory (``memory://``, Redis) needs ``--keys``. A running server sees a change within a
second, in every worker (:mod:`hopcast.auth.keys`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from hopcast.auth.keys import KeyFile
from hopcast.auth.roles import Role
from hopcast.cli.common import Settings, make_console, print_json, store_dir, wants_json
from hopcast.durations import now_us
from hopcast.errors import ConfigError

#: The key file's name inside an LMDB store directory.
KEYS_FILE = "keys.json"
#: Host names every server answers to besides its bind host (see hopcast.api.browser).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

Fn = Callable[..., Any]


def keys_path(settings: Settings, keys: str | None) -> Path:
    """The key file: ``--keys``, else ``keys.json`` in the store directory.

    Raises:
        ConfigError: neither is available (a store that is not a directory).
    """
    if keys:
        return Path(keys)
    directory = store_dir(settings.store)
    if directory is None:
        raise ConfigError(
            f"the store {settings.store!r} is not a directory: name the key file with --keys "
            "FILE (or $HOPCAST_KEYS)"
        )
    return directory / KEYS_FILE


def keys_option(fn: Fn) -> Fn:
    return click.option(
        "--keys",
        envvar="HOPCAST_KEYS",
        metavar="FILE",
        help="API key file [env HOPCAST_KEYS; default: keys.json in the --store directory].",
    )(fn)


def security_options(fn: Fn) -> Fn:
    """``--keys``, ``--insecure``, ``--allowed-host``, ``--cors-origin``: how a server guards
    its door (see :func:`server_security`)."""
    fn = click.option(
        "--cors-origin",
        "cors_origins",
        multiple=True,
        metavar="ORIGIN",
        help="Let pages from this origin (https://console.example) call the API; repeatable. "
        "Default: none (CORS closed).",
    )(fn)
    fn = click.option(
        "--allowed-host",
        "allowed_hosts",
        multiple=True,
        metavar="NAME",
        help="Also answer requests for this Host name (loopback names and --host always); "
        "repeatable; '*' turns the check off (behind a proxy that checks it).",
    )(fn)
    fn = click.option(
        "--insecure",
        is_flag=True,
        help="Serve WITHOUT authentication (every route open). Only on a loopback --host.",
    )(fn)
    return keys_option(fn)


def is_loopback(host: str) -> bool:
    """Whether a bind host is a loopback address or ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_security(
    settings: Settings,
    host: str,
    keys: str | None,
    insecure: bool,
    allowed_hosts: Sequence[str],
    cors_origins: Sequence[str],
) -> Any:
    """The :class:`hopcast.api.policy.Security` of a server bound to ``host``.

    Raises:
        ConfigError: ``--insecure`` on a host that is not loopback; no ``--insecure`` and no
            valid key in the key file.
    """
    from hopcast.api.policy import Security

    hosts = (*LOOPBACK_NAMES, host, *allowed_hosts)
    origins = tuple(o.rstrip("/") for o in cors_origins)
    if insecure:
        if not is_loopback(host):
            raise ConfigError(
                f"--insecure serves every route without authentication, so only on loopback "
                f"(--host 127.0.0.1), not on {host!r}; create a key with `hopcast auth create "
                "--name NAME --role admin` instead"
            )
        if "*" in allowed_hosts:
            # Without keys, the Host check is what keeps a web page out (DNS rebinding: a
            # hostile name resolved to 127.0.0.1 is the page's own origin, so its writes pass
            # the Origin check too); --insecure cannot also turn it off.
            raise ConfigError(
                "--insecure with --allowed-host '*' would let any web page the browser on this "
                "host opens use the API (DNS rebinding); name the hosts, or use an API key"
            )
        return Security(keys=None, allowed_hosts=hosts, cors_origins=origins)
    path = keys_path(settings, keys)
    store = KeyFile(path)
    if not store.exists() or not store.active():
        raise ConfigError(
            f"no valid API key in {path}: create one with `hopcast auth create --name NAME "
            "--role admin` (or serve without authentication, on loopback only, with --insecure)"
        )
    return Security(keys=store, allowed_hosts=hosts, cors_origins=origins)


# -- hopcast auth ------------------------------------------------------------------------------


@click.group("auth")
def auth() -> None:
    """Manage API keys (roles: reader, writer, operator, admin)."""


@auth.command("create")
@click.option("--name", required=True, help="A label for people (who or what uses the key).")
@click.option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    type=click.Choice([r.value for r in Role]),
    help="A role the key holds; repeatable.",
)
@keys_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def create(
    settings: Settings, name: str, roles: tuple[str, ...], keys: str | None, as_json: bool
) -> None:
    """Create a key and print it ONCE (only its hash is stored)."""
    path = keys_path(settings, keys)
    record, key = KeyFile(path).create(name, roles, now_us())
    if wants_json(settings, as_json):
        print_json({**record.to_dict(with_hash=False), "key": key, "file": str(path)})
        return
    out = make_console()
    out.print(f"key id   {record.id}  ({record.name}; {', '.join(r.value for r in record.roles)})")
    out.print(f"key      {key}")
    out.print(
        f"[dim]Shown once: store it now. Send it as 'Authorization: Bearer <key>'. "
        f"Key file: {path}[/]"
    )


@auth.command("list")
@keys_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def list_keys(settings: Settings, keys: str | None, as_json: bool) -> None:
    """List the keys: id, name, roles, created, revoked (never a secret or a hash)."""
    path = keys_path(settings, keys)
    records = KeyFile(path).records()
    if wants_json(settings, as_json):
        print_json({"file": str(path), "keys": [r.to_dict(with_hash=False) for r in records]})
        return
    table = Table("id", "name", "roles", "created", "revoked", title=str(path))
    for r in records:
        table.add_row(
            r.id,
            r.name,
            ", ".join(x.value for x in r.roles),
            _when(r.created),
            "-" if r.revoked is None else _when(r.revoked),
        )
    make_console().print(table)


@auth.command("revoke")
@click.argument("key_id")
@keys_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def revoke(settings: Settings, key_id: str, keys: str | None, as_json: bool) -> None:
    """Revoke key KEY_ID: refused by every server within a second."""
    path = keys_path(settings, keys)
    record = KeyFile(path).revoke(key_id, now_us())
    if wants_json(settings, as_json):
        print_json(record.to_dict(with_hash=False))
        return
    make_console().print(f"revoked {record.id} ({record.name}) at {_when(record.revoked)}")


def _when(us: int | None) -> str:
    import datetime as dt

    if us is None:
        return "-"
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
