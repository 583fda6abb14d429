"""Mirrors tool-description versions and labels into the MLflow prompt registry.

Each version becomes an MLflow prompt version (template = the rendered text, tags = author, our
version number and the parameters as JSON); each label becomes an alias, so pipelines can
`mlflow.genai.load_prompt("prompts:/<tool>@canary")`. MLflow is imported on the sync thread, the
first time there is something to sync, so the server starts without paying for it. A failure
(MLflow store unreachable) is kept in `status()` and retried; the request path never waits.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from contextlab.extension.prompts import LATEST, PromptStore

log = logging.getLogger(__name__)


class MlflowPromptSync:
    """A background thread that brings MLflow up to date with the prompt store."""

    def __init__(self, prompts: PromptStore, tracking_uri: str, *, retry_seconds: float = 30.0) -> None:
        self.prompts = prompts
        self.tracking_uri = tracking_uri
        self.retry_seconds = retry_seconds
        self.last_error: str | None = None
        self.synced = 0
        self._client: Any = None
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._busy = True
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="contextlab-mlflow-prompts", daemon=True)
        self._thread.start()
        self._unlabel: list[tuple[str, str]] = []
        prompts.listeners.append(self._on_change)

    def _on_change(self, prompt: str, action: str) -> None:
        if action.startswith("unlabel:"):
            self._unlabel.append((prompt, action.split(":", 1)[1]))
        self.kick()

    def kick(self) -> None:
        with self._idle:
            self._busy = True
        self._wake.set()

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until everything recorded so far is in MLflow (False on timeout or error)."""
        self.kick()
        with self._idle:
            done = self._idle.wait_for(lambda: not self._busy, timeout)
        return done and self.last_error is None

    def status(self) -> dict[str, Any]:
        versions, labels = self.prompts.unsynced()
        return {
            "tracking_uri": self.tracking_uri,
            "pending_versions": len(versions),
            "pending_labels": len(labels),
            "synced": self.synced,
            "last_error": self.last_error,
        }

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                self._sync_once()
                self.last_error = None
            except Exception as exc:  # the store may be down; keep the error and try again later
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("MLflow prompt sync to %s failed: %s", self.tracking_uri, self.last_error)
            with self._idle:
                if not self._wake.is_set():  # nothing new arrived during this pass
                    self._busy = False
                    self._idle.notify_all()
            self._wake.wait(self.retry_seconds if self.last_error else None)

    def _sync_once(self) -> None:
        versions, labels = self.prompts.unsynced()
        if not versions and not labels and not self._unlabel:
            return
        client = self._mlflow()
        while self._unlabel:
            prompt, label = self._unlabel[0]
            try:
                client.delete_prompt_alias(prompt, label)
            except Exception as exc:  # an alias MLflow never had is already gone
                if "RESOURCE_DOES_NOT_EXIST" not in str(exc) and "not found" not in str(exc).lower():
                    raise
            self._unlabel.pop(0)
        mapping: dict[tuple[str, int], int] = {}
        for version in versions:
            registered = client.register_prompt(
                name=version.prompt,
                template=version.content.render(),
                commit_message=version.message or None,
                tags={
                    "contextlab.kind": version.kind,
                    "contextlab.version": str(version.version),
                    "contextlab.author": version.author,
                    "contextlab.parameters": json.dumps(version.content.parameters, sort_keys=True),
                },
            )
            mapping[(version.prompt, version.version)] = int(registered.version)
            self.prompts.mark_synced(version.prompt, version=version.version, mlflow_version=int(registered.version))
            self.synced += 1
        for label in labels:
            if label.label == LATEST:  # MLflow resolves @latest itself and reserves the alias
                self.prompts.mark_synced(label.prompt, label=label.label, label_version=label.version)
                continue
            target = mapping.get((label.prompt, label.version))
            if target is None:
                target = self.prompts.version(label.prompt, label.version).mlflow_version
            if target is None:
                continue  # its version is not registered yet; the next pass handles it
            client.set_prompt_alias(label.prompt, label.label, target)
            self.prompts.mark_synced(label.prompt, label=label.label, label_version=label.version)

    def _mlflow(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client
