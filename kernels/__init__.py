"""Kernel side of ContextLab: the %%copilot IPython extension and the ContextLab Python kernel spec.

`%load_ext contextlab.kernels` registers `%%copilot`, `%copilot` and `%%duckdb` (see
`docs/copilot-cells.md`); the "ContextLab Python" kernel loads it at start. This module stays
import-light: the magics are imported when the extension is loaded.
"""

from __future__ import annotations

from typing import Any

KERNEL_NAME = "contextlab-python"


def load_ipython_extension(ipython: Any) -> None:
    from contextlab.kernels.magic import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from contextlab.kernels.magic import unload

    unload(ipython)


def install_kernelspec(user: bool = True, prefix: str | None = None) -> str:
    """Install the "ContextLab Python" kernel spec for this Python (`sys.executable`); returns its directory.

    `prefix` installs under `<prefix>/share/jupyter/kernels` (e.g. `sys.prefix` for a virtualenv) instead
    of the user's Jupyter data directory.
    """
    import json
    import shutil
    import sys
    import tempfile
    from importlib.resources import as_file, files
    from pathlib import Path

    from jupyter_client.kernelspec import KernelSpecManager

    with as_file(files(__name__) / "kernelspec") as source, tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / KERNEL_NAME
        shutil.copytree(source, target)
        spec_file = target / "kernel.json"
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
        spec["argv"][0] = sys.executable
        spec_file.write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
        return KernelSpecManager().install_kernel_spec(
            str(target), kernel_name=KERNEL_NAME, user=user and prefix is None, prefix=prefix
        )
