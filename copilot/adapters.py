"""Serving LoRA adapters of the offline model: model names, the MLflow registry, and a cache per adapter.

The delta fine-tuning pipeline (`contextlab.copilot.finetune`) registers each adapter it trains as a
version of the MLflow registered model `contextlab-local-adapter`, with the alias `candidate` (always)
and `champion` (only when it measured better). The router serves them under these model names:

- `local+adapter@champion`, `local+adapter@<alias>`: the version the alias points at;
- `local+adapter:/path/to/adapter`: a folder written by `train_adapter` (or a downloaded MLflow model).

An adapter reference, as `LocalModelBackend(adapter=...)` and `ModelSpec.adapter` take it, is a folder,
`@alias`, `<registered name>@alias`, or a `models:/<name>@<alias>` / `models:/<name>/<version>` URI.
Registry versions are downloaded once into `$CONTEXTLAB_MODEL_CACHE/adapters/` (a version never changes,
so the copy never goes stale); the tracking URI is the one given, else `$MLFLOW_TRACKING_URI`, else the
workspace's `sqlite:///<workspace>/.contextlab/mlflow.db`.

The registered versions are MLflow pyfunc models (`loader_module` = this module), so
`mlflow.pyfunc.load_model("models:/contextlab-local-adapter@champion").predict(["count the orders"])`
answers with the adapter too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from contextlab.copilot.local import (
    ADAPTER_METADATA,
    AdapterError,
    LocalModelBackend,
    default_cache_dir,
    read_adapter_metadata,
)

REGISTERED_NAME = "contextlab-local-adapter"
NAME_PREFIXES = ("local+adapter", "smollm2+adapter")
ENV_WORKSPACE = "CONTEXTLAB_WORKSPACE"
SHARED_BACKENDS = 2  # loaded adapters kept in memory (each holds a float32 copy of the base model, about 540 MB)

_ALIAS = re.compile(r"^(?P<name>[^@]*)@(?P<alias>[A-Za-z0-9_\-]+)$")
_backends: OrderedDict[tuple[str, str, int | None], LocalModelBackend] = OrderedDict()
_backends_lock = threading.Lock()


def adapter_reference(model_name: str | None) -> str | None:
    """The adapter reference in a model name (`local+adapter@champion` → `@champion`, `local+adapter:/p` → `/p`),
    or None when the name does not ask for an adapter."""
    if not model_name:
        return None
    for prefix in NAME_PREFIXES:
        if model_name.startswith(prefix):
            rest = model_name[len(prefix) :]
            if rest.startswith("@") and len(rest) > 1:
                return rest
            if rest.startswith(":") and len(rest) > 1:
                return rest[1:]
            raise AdapterError(
                f"Model {model_name!r}: say which adapter, e.g. local+adapter@champion, local+adapter@candidate "
                "or local+adapter:/path/to/adapter."
            )
    return None


def default_tracking_uri() -> str:
    """`$MLFLOW_TRACKING_URI`, else the embedded store of the workspace (`$CONTEXTLAB_WORKSPACE`, else the cwd)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    workspace = Path(os.environ.get(ENV_WORKSPACE) or ".").resolve()
    return f"sqlite:///{workspace / '.contextlab' / 'mlflow.db'}"


def resolve_adapter(
    reference: str | Path,
    *,
    tracking_uri: str | None = None,
    name: str = REGISTERED_NAME,
    cache_root: str | Path | None = None,
) -> Path:
    """The local folder of an adapter (the one holding `adapter_config.json` and `contextlab-adapter.json`).

    `reference`: a folder, `@alias` (of the registered model `name`), `<name>@alias`, or a `models:/` URI.
    Raises `AdapterError` with what to do when there is no such folder or registry entry.
    """
    text = str(reference).strip()
    path = Path(text).expanduser()
    if path.is_dir():
        return adapter_folder(path)
    registered, selector = _registry_reference(text, name)
    if registered is None:
        raise AdapterError(
            f"No adapter folder at {path}. Give a folder written by contextlab.copilot.finetune.train_adapter, or "
            f"a registry alias such as @champion (registered model {name!r})."
        )
    return registry_adapter(registered, selector, tracking_uri=tracking_uri, cache_root=cache_root)[0]


def adapter_folder(folder: Path) -> Path:
    """`folder` itself, or the adapter inside an MLflow pyfunc model folder (its `data` path)."""
    if (folder / ADAPTER_METADATA).is_file():
        return folder
    mlmodel = folder / "MLmodel"
    if mlmodel.is_file():
        import yaml

        flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function", {})
        data = flavor.get("data")
        if data and (folder / data / ADAPTER_METADATA).is_file():
            return folder / data
    raise AdapterError(
        f"{folder} holds no {ADAPTER_METADATA}: it is not an adapter trained by contextlab.copilot.finetune, so "
        "its base model cannot be checked."
    )


def adapter_backend(
    reference: str | Path,
    *,
    model: str = "smollm2-135m-instruct",
    tracking_uri: str | None = None,
    threads: int | None = None,
) -> LocalModelBackend:
    """A backend serving the base model with this adapter, shared by every caller asking for the same adapter.

    A registry reference is resolved now, so a backend made after the alias moved serves the new version. When
    it cannot be resolved yet (no registry there so far), the backend resolves it when it loads, and reports
    the error then. The model itself loads on the first `complete`; the least recently used of more than
    `SHARED_BACKENDS` adapters is closed.
    """
    try:
        folder: Path | None = resolve_adapter(reference, tracking_uri=tracking_uri)
    except AdapterError:
        folder = None
    key = (model, str(folder.resolve()) if folder else f"{tracking_uri}|{reference}", threads)
    with _backends_lock:
        backend = _backends.get(key)
        if backend is None:
            backend = _backends[key] = LocalModelBackend(
                model, adapter=folder or reference, threads=threads, registry_uri=tracking_uri
            )
        _backends.move_to_end(key)
        evicted = [_backends.popitem(last=False)[1] for _ in range(max(0, len(_backends) - SHARED_BACKENDS))]
    for old in evicted:
        old.close()
    return backend


def _registry_reference(text: str, default_name: str) -> tuple[str | None, str]:
    """(registered model name, "@alias" or version number) for a registry reference, else (None, "")."""
    if text.startswith("models:/"):
        body = text[len("models:/") :]
        found = _ALIAS.match(body)
        if found:
            return found["name"] or default_name, "@" + found["alias"]
        registered, _, version = body.rpartition("/")
        if registered and version.isdigit():
            return registered, version
        raise AdapterError(f"{text!r}: expected models:/<name>@<alias> or models:/<name>/<version>.")
    found = _ALIAS.match(text)
    if found and "/" not in found["name"]:
        return found["name"] or default_name, "@" + found["alias"]
    return None, ""


def registry_adapter(
    registered: str,
    selector: str,
    *,
    tracking_uri: str | None = None,
    cache_root: str | Path | None = None,
) -> tuple[Path, str]:
    """(local folder, version) of a registered adapter; `selector` is `@alias` or a version number.

    The version is downloaded into the cache the first time; `AdapterError` says what to do when the registry
    has no such alias or version.
    """
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    tracking_uri = tracking_uri or default_tracking_uri()
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise AdapterError(  # MLflow would create an empty store there
            f"No MLflow store at {tracking_uri}, so no adapter {registered}{selector}: run the delta_finetune pipeline "
            "first, or point MLFLOW_TRACKING_URI (or the model's base_url) at the registry."
        )
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if selector.startswith("@"):
            version = client.get_model_version_by_alias(registered, selector[1:])
        else:
            version = client.get_model_version(registered, selector)
    except MlflowException as exc:
        what = f"{registered}{selector}" if selector.startswith("@") else f"{registered} version {selector}"
        raise AdapterError(
            f"No adapter {what} in the MLflow registry at {tracking_uri}: run the delta_finetune pipeline first "
            "(it always sets @candidate, and @champion once an adapter measured better than the base model)."
        ) from exc
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_dir("adapters")
    source_key = hashlib.sha256(f"{tracking_uri}\n{version.source}".encode()).hexdigest()[:10]
    target = root / _safe(registered) / f"v{version.version}-{source_key}"
    with contextlib.suppress(AdapterError):
        return adapter_folder(target), str(version.version)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:  # downloaded beside the cache entry and renamed into place: a reader never sees half a copy
        download_artifacts(artifact_uri=version.source, dst_path=str(tmp), tracking_uri=tracking_uri)
        children = [p for p in tmp.iterdir() if p.is_dir()]
        folder = tmp if (tmp / "MLmodel").is_file() or len(children) != 1 else children[0]
        adapter_folder(folder)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.rename(folder, target)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return adapter_folder(target), str(version.version)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "adapter"


# -- MLflow pyfunc loader -------------------------------------------------------------------------------------------


class AdapterPyfunc:
    """What `mlflow.pyfunc.load_model` returns for a registered adapter: requests in, answers out."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = adapter_folder(Path(folder))
        self.metadata = read_adapter_metadata(self.folder)
        self.backend = LocalModelBackend(self.metadata["base_model"], adapter=self.folder)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> list[str]:
        """Answer each request (sent as the user message); `params`: `max_tokens` (default 128).

        MLflow hands the input over as a one-column DataFrame (the model's signature is one string column).
        """
        max_tokens = int((params or {}).get("max_tokens") or 128)
        if hasattr(model_input, "columns"):
            model_input = model_input.iloc[:, 0].tolist()
        elif isinstance(model_input, str):
            model_input = [model_input]
        return [
            self.backend.complete([{"role": "user", "content": str(request)}], max_tokens=max_tokens).text
            for request in model_input
        ]


def _load_pyfunc(data_path: str) -> AdapterPyfunc:
    """MLflow's entry point for `loader_module` pyfunc models (called with the model's `data` folder)."""
    return AdapterPyfunc(data_path)
