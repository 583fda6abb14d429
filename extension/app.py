"""The server extension: configuration (traitlets), service wiring and lifecycle."""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from traitlets import Bool, Dict, Enum, Float, Instance, Int, List, Unicode, default
from traitlets.utils.importstring import import_item

import contextlab
from contextlab.connect import connection_banner
from contextlab.extension.handlers import MCPHandler, StatusHandler, request_logger
from contextlab.extension.service import ContextService
from contextlab.extension.sources import JupyterKernelSource
from contextlab.providers.base import Provider
from contextlab.providers.kernels import KernelsProvider
from contextlab.providers.logs import LogBuffer, LogsProvider
from contextlab.providers.metrics import MetricsProvider, RequestStats
from contextlab.providers.notebooks import NotebooksProvider
from contextlab.providers.sql import SQLProvider
from contextlab.state import AuditWriter, StateStore, sqlite_url_for_workspace


class ContextLab(ExtensionApp):
    """Serves the workspace's context (notebooks, kernels, DuckDB, logs, metrics) over MCP inside Jupyter."""

    name = "contextlab"
    description = __doc__
    load_other_extensions = True

    providers = List(
        Unicode(),
        default_value=["notebooks", "kernels", "sql", "logs", "metrics"],
        help="Providers to mount behind the endpoint, by name (keys of provider_classes).",
    ).tag(config=True)

    provider_classes = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        default_value={},
        help="Extra or replacement providers: name -> import string of a Provider subclass whose "
        "constructor takes the extension app as its only argument.",
    ).tag(config=True)

    sql_databases = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        default_value={},
        help="DuckDB databases for the sql provider: name -> path (relative to the root or absolute). "
        "When empty, every *.duckdb file within two folders of the root is served.",
    ).tag(config=True)

    sql_row_limit = Int(500, help="Default row limit of sql__query results.").tag(config=True)
    sql_max_row_limit = Int(10_000, help="Highest row limit a caller may ask sql__query for.").tag(config=True)
    sql_timeout_seconds = Float(10.0, help="sql__query is interrupted after this many seconds.").tag(config=True)
    notebook_output_max_chars = Int(2000, help="Each notebook cell output is truncated to this size.").tag(config=True)
    kernel_timeout_seconds = Float(10.0, help="How long to wait for a kernel to answer a variables probe.").tag(
        config=True
    )
    max_request_bytes = Int(4 * 1024 * 1024, help="Largest MCP request body accepted (HTTP 413 above it).").tag(
        config=True
    )
    session_idle_timeout = Float(1800.0, help="Idle MCP sessions are closed after this many seconds.").tag(config=True)
    resource_poll_seconds = Float(
        2.0, help="While a client is subscribed to resources, how often notebooks are checked for changes."
    ).tag(config=True)
    log_buffer_size = Int(2000, help="How many recent log records the logs provider keeps.").tag(config=True)
    log_capture_level = Enum(
        ["DEBUG", "INFO", "WARNING", "ERROR"],
        "INFO",
        help="Lowest level the logs provider keeps (Jupyter logs every request at DEBUG).",
    ).tag(config=True)
    mcp_log_level = Unicode("WARNING", help="Log level of the MCP SDK's loggers.").tag(config=True)
    state_url = Unicode(
        "", help="SQLAlchemy URL of the control-plane store; default sqlite:///<state_dir>/state.db."
    ).tag(config=True)
    state_dir = Unicode("", help="Folder for ContextLab's state; default <root_dir>/.contextlab.").tag(config=True)
    freeze_startup_objects = Bool(
        True,
        help="Call gc.freeze() once the server has started, so that the cyclic garbage collector stops "
        "rescanning the server's long-lived start-up objects; this shortens its pauses.",
    ).tag(config=True)
    show_connection_banner = Bool(
        False, help="Print the MCP endpoint and client configuration once the server is listening."
    ).tag(config=True)

    service = Instance(ContextService, allow_none=True)
    store = Instance(StateStore, allow_none=True)
    log_buffer = Instance(LogBuffer, allow_none=True)

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return str(Path(self.serverapp.root_dir) / ".contextlab")

    @property
    def root_dir(self) -> Path:
        return Path(self.serverapp.root_dir).expanduser().resolve()

    @property
    def mcp_url_path(self) -> str:
        return url_path_join(self.serverapp.base_url, contextlab.MCP_PATH)

    # -- wiring --------------------------------------------------------------------------------
    def initialize_settings(self) -> None:
        logging.getLogger("mcp").setLevel(self.mcp_log_level)
        self.log_buffer = LogBuffer(self.log_buffer_size, level=logging.getLevelName(self.log_capture_level))
        self._attach_log_buffer()

        self.store = StateStore(self.state_url or sqlite_url_for_workspace(self.state_dir))
        self.store.migrate()
        self.kernel_source = JupyterKernelSource(self.serverapp)
        self.request_stats = RequestStats()

        providers = [self._build_provider(name) for name in self.providers]
        self.service = ContextService(
            providers,
            audit=AuditWriter(self.store),
            stats=self.request_stats,
            max_request_bytes=self.max_request_bytes,
            session_idle_timeout=self.session_idle_timeout,
            resource_poll_seconds=self.resource_poll_seconds,
        )
        self.store.save_manifests([m.model_dump(mode="json") for m in self.service.manifests])
        self.log.info(
            "ContextLab %s: MCP endpoint at %s with providers %s",
            contextlab.__version__,
            self.mcp_url_path,
            ", ".join(self.providers),
        )

    def initialize_handlers(self) -> None:
        self.handlers.extend(
            [
                (
                    r"/contextlab/mcp/?",
                    MCPHandler,
                    {"service": self.service, "logger": request_logger(self.serverapp.log, self.serverapp.log_level)},
                ),
                (
                    r"/contextlab/api/status",
                    StatusHandler,
                    {"service": self.service, "mcp_url_path": self.mcp_url_path},
                ),
            ]
        )

    def builtin_provider(self, name: str) -> Provider:
        if name == "notebooks":
            return NotebooksProvider(self.root_dir, max_output_chars=self.notebook_output_max_chars)
        if name == "kernels":
            return KernelsProvider(self.kernel_source, timeout_seconds=self.kernel_timeout_seconds)
        if name == "sql":
            options = {
                "row_limit": self.sql_row_limit,
                "max_row_limit": self.sql_max_row_limit,
                "timeout_seconds": self.sql_timeout_seconds,
            }
            if self.sql_databases:
                paths = {n: self.root_dir / p for n, p in self.sql_databases.items()}
                return SQLProvider(paths, **options)
            return SQLProvider.discover(self.root_dir, **options)
        if name == "logs":
            return LogsProvider(self.log_buffer)
        if name == "metrics":
            return MetricsProvider(self.kernel_source, self.request_stats, self.kernel_source.session_count)
        raise ValueError(
            f"Unknown ContextLab provider {name!r}: add it to ContextLab.provider_classes or remove it "
            "from ContextLab.providers."
        )

    def _build_provider(self, name: str) -> Provider:
        if name in self.provider_classes:
            cls: Any = import_item(self.provider_classes[name])
            return cls(self)
        return self.builtin_provider(name)

    def _log_buffer_hosts(self) -> list[logging.Logger]:
        """The root logger, plus the application loggers that do not propagate to it."""
        extra = {self.serverapp.log, self.log}
        return [logging.getLogger()] + [lg for lg in extra if isinstance(lg, logging.Logger) and not lg.propagate]

    def _attach_log_buffer(self) -> None:
        for logger in self._log_buffer_hosts():
            logger.addHandler(self.log_buffer)

    # -- lifecycle -------------------------------------------------------------------------------
    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        await self.service.start()
        if self.freeze_startup_objects:
            gc.collect()
            gc.freeze()
        if self.show_connection_banner:
            print(
                connection_banner(serverapp.connection_url, serverapp.identity_provider.token or ""),
                file=sys.stdout,
                flush=True,
            )

    async def stop_extension(self) -> None:
        if self.service is not None:
            await self.service.stop()
        if self.log_buffer is not None:
            for logger in self._log_buffer_hosts():
                logger.removeHandler(self.log_buffer)
        if self.store is not None:
            self.store.close()
