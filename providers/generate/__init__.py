"""Generate editable provider packages from an OpenAPI 3.x spec or a database.

`contextlab provider new --from-openapi …|--from-db …` (contextlab/provider_cli.py) drives these
modules: `openapi` and `database` read the source into a small model, `render` writes readable
Python for it, and `package` lays out the package folder and guards hand edits.
"""

from __future__ import annotations


class GenerationError(Exception):
    """The source cannot be turned into a provider; the message says precisely why."""


__all__ = ["GenerationError"]
