"""An app as a plain Panel script (low-code): the same pages, ready to extend in Python.

`contextlab apps export NAME --python -o app.py` writes a script that embeds the app's PageDSL document,
renders every page with the same renderer the apps server uses, and puts them in tabs. Run it with
`panel serve app.py`, then add your own Panel components next to the generated ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from contextlab.apps import dsl

TEMPLATE = '''"""{title}: generated from version {version} of the ContextLab app `{name}`.

Run it:    panel serve {filename} --show
Regenerate: contextlab apps export {name} --python -o {filename}

The pages below are built by the same renderer as `contextlab apps serve`; the document (DOC) is the app's
PageDSL. Edit DOC, or add your own Panel objects to the layouts, e.g. `pages["{first}"].append(my_plot)`.
Here the viewer holds every role; publish the app to serve it with sign-in and role checks.
"""

from pathlib import Path

import panel as pn
import yaml

from contextlab.apps.render import AppSession, Viewer

DATA_DIR = Path({data_dir!r})  # where the app's DuckDB files live (the workspace's apps folder)
DOC = yaml.safe_load(
    r"""
{yaml}"""
)

session = AppSession(DOC, DATA_DIR, Viewer("developer", {{"admin"}}))
pages = {{page["id"]: session.page(page["route"]) for page in DOC["pages"]}}

# Extend here, for example:
# pages["{first}"].append(pn.pane.Markdown("Built with ContextLab"))

app = pn.Tabs(*[(page.get("title") or page["id"], pages[page["id"]]) for page in DOC["pages"]])
app.servable(title={title!r})
'''


def panel_script(doc: Mapping[str, Any], data_dir: str | Path, filename: str = "app.py") -> str:
    """The Panel script of `doc` (a saved version) whose data lives in `data_dir`."""
    text = dsl.to_yaml(doc)
    if '"""' in text:
        raise ValueError('the document contains """, which cannot be embedded in the script; export YAML instead')
    return TEMPLATE.format(
        title=doc["app"].get("title") or doc["app"]["name"],
        name=doc["app"]["name"],
        version=doc["app"].get("version", "?"),
        filename=filename,
        first=doc["pages"][0]["id"],
        data_dir=str(Path(data_dir).resolve()),
        yaml=text,
    )
