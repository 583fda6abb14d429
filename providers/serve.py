"""Serve one provider on its own: `python -m contextlab.providers.serve pkg.module:ProviderClass`.

Over stdio by default (what the gateway's registry starts), or streamable HTTP with `--http PORT`.
The class must be constructible without arguments.
"""

from __future__ import annotations

import argparse
import sys

from traitlets.utils.importstring import import_item

from contextlab.providers.base import Provider


def load_provider(target: str) -> Provider:
    """Import `pkg.module:Class` (or `pkg.module.Class`) and instantiate it without arguments."""
    path = target.replace(":", ".")
    try:
        cls = import_item(path)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"Cannot import {target!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise SystemExit(f"{target!r} is not a contextlab Provider subclass.")
    try:
        return cls()
    except TypeError as exc:
        raise SystemExit(
            f"{target!r} cannot be built without arguments ({exc}); wrap it in a subclass that can."
        ) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contextlab.providers.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("provider", help="The provider class, as pkg.module:Class.")
    parser.add_argument("--http", type=int, metavar="PORT", help="Serve streamable HTTP on this port instead of stdio.")
    args = parser.parse_args(argv)
    server = load_provider(args.provider).as_server()
    if args.http is None:
        server.run("stdio")
        return 0
    import uvicorn

    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=args.http, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
