"""The server extension: configuration (traitlets), service wiring and lifecycle."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from traitlets import Bool, Dict, Enum, Float, Instance, Int, List, TraitError, Type, Unicode, default, validate
from traitlets.utils.importstring import import_item

import contextlab
from contextlab.connect import connection_banner, mcp_url
from contextlab.extension import rest
from contextlab.extension.apps_rest import AppsHandler, AppsPageHandler
from contextlab.extension.copilot_records import CopilotRecords
from contextlab.extension.copilot_watch import CONTENTS_EVENTS, DeletedCellWatcher
from contextlab.extension.events import EventBus
from contextlab.extension.gateway import Gateway
from contextlab.extension.handlers import MCPHandler, StatusHandler, request_logger
from contextlab.extension.policy import PolicyEngine
from contextlab.extension.prompt_mlflow import MlflowPromptSync
from contextlab.extension.prompts import PromptStore
from contextlab.extension.registry import Registry, RegistryError, SecretBox, parse_manifest
from contextlab.extension.router import Router, ToolReviews
from contextlab.extension.service import AdminResource, ContextService
from contextlab.extension.sources import JupyterKernelSource
from contextlab.extension.tokens import TokenService
from contextlab.extension.tool_search import MAX_K, ToolSearch
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
        default_value=["notebooks", "kernels", "sql", "logs", "metrics", "examples", "docs", "apps"],
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

    policy_file = Unicode(
        "",
        help="The gateway's ABAC / rate-limit / DLP policy (YAML); default <state_dir>/policy.yaml. "
        "Without the file the built-in default policy is in force.",
    ).tag(config=True)
    policy_check_seconds = Float(5.0, help="How often the policy file is checked for changes.").tag(config=True)
    secret_key_file = Unicode(
        "",
        help="Fernet key that encrypts upstream secrets; default <jupyter data dir>/contextlab/secret.key, "
        "outside the workspace. Created on first use.",
    ).tag(config=True)
    registry_manifests = List(
        Unicode(), default_value=[], help="Registry manifest files (YAML/JSON) applied at start-up."
    ).tag(config=True)
    upstream_list_ttl_seconds = Float(30.0, help="How long upstream tool/prompt/resource lists are cached.").tag(
        config=True
    )
    upstream_health_seconds = Float(60.0, help="How often every enabled upstream is health-checked.").tag(config=True)
    breaker_threshold = Int(5, help="Consecutive upstream failures that open its circuit breaker.").tag(config=True)
    breaker_cooldown_seconds = Float(30.0, help="How long an open breaker fails fast before a trial call.").tag(
        config=True
    )
    max_sessions_per_upstream = Int(64, help="Upstream connections kept per server (one per caller identity).").tag(
        config=True
    )
    jupyter_user_scopes = List(
        Unicode(), default_value=["*"], help="Token scopes granted to users authenticated by Jupyter itself."
    ).tag(config=True)
    jupyter_user_attributes = Dict(
        default_value={"*": {"roles": ["Owner"]}},
        help="ABAC attributes (roles, org, project, tenant) of Jupyter users: username -> attributes; '*' for all.",
    ).tag(config=True)
    builtin_attributes = Dict(
        default_value={"*": {"sensitivity": "internal"}},
        help="ABAC attributes (org, project, sensitivity, owner) of the built-in providers: name -> attributes; "
        "'*' for all.",
    ).tag(config=True)

    mlflow_tracking_uri = Unicode(
        "",
        help="MLflow tracking and prompt-registry URI that tool-description versions are mirrored to. "
        "Default: sqlite:///<state_dir>/mlflow.db.",
    ).tag(config=True)
    mlflow_prompt_sync = Bool(
        True, help="Mirror tool-description versions and labels into the MLflow prompt registry."
    ).tag(config=True)

    tool_search = Bool(
        True, help="Serve the search_tools meta-tool and the top_k tools/list mode from a LanceDB tool index."
    ).tag(config=True)
    tool_index_dir = Unicode("", help="LanceDB folder of the tool index. Default: <state_dir>/tool-index.").tag(
        config=True
    )
    tool_search_k = Int(
        5, help=f"Tools returned by search_tools and the top_k listing when k is not given (1–{MAX_K})."
    ).tag(config=True)
    pinned_tools = List(
        Unicode(),
        default_value=[],
        help="Glob patterns of essential tools always listed in top_k mode (search_tools is always listed).",
    ).tag(config=True)

    copilot_models = List(
        default_value=[],
        help="Models the Copilot may use, as ModelSpec dicts: name, backend (openai|anthropic|local), model, "
        "base_url, api_key_env, locality (local|private|public), cost_per_1k_input, cost_per_1k_output, "
        "timeout_s, latency. The offline SmolLM2 model is always available as 'smollm2'.",
    ).tag(config=True)
    copilot_default_chain = List(
        Unicode(), default_value=[], help="The order models are tried in (default: as listed, then smollm2)."
    ).tag(config=True)
    copilot_budgets = Dict(default_value={}, help="LLM budget per project, in the models' cost unit.").tag(config=True)
    copilot_target_latency = Dict(
        default_value={}, help="Latency preference per Copilot target: target -> 'fast' puts fast models first."
    ).tag(config=True)

    docs_index_dir = Unicode("", help="LanceDB folder of the docs provider; default <state_dir>/docs-index.").tag(
        config=True
    )
    docs_sources = List(
        Unicode(),
        default_value=["**/*.md", "**/*.ipynb"],
        help="Globs (relative to the root) of the files the docs provider indexes at start-up.",
    ).tag(config=True)
    docs_index_on_start = Bool(
        True, help="Bring the docs index up to date in the background when the server starts (incremental)."
    ).tag(config=True)
    apps_dir = Unicode(
        "apps", help="Folder of the no-code apps' DuckDB files and BPMN flows, relative to the root."
    ).tag(config=True)
    pipeline_scheduler = Bool(True, help="Fire pipeline schedules inside the server.").tag(config=True)
    pipeline_tick_seconds = Float(15.0, help="How often due pipeline schedules are checked.").tag(config=True)
    pipeline_executor = Unicode("local", help="Where pipeline notebooks run: local, local:N, or dask://host:8786.").tag(
        config=True
    )
    pipeline_max_concurrent = Int(2, help="Pipeline runs in flight at once, all pipelines together.").tag(config=True)
    pipeline_retention_days = Float(30.0, help="Finished pipeline runs older than this are deleted.").tag(config=True)
    pipeline_keep_last = Int(200, help="Pipeline runs kept per pipeline (older ones are deleted).").tag(config=True)
    smtp_host = Unicode("localhost", help="SMTP server for pipeline email alerts.").tag(config=True)
    smtp_port = Int(25, help="SMTP port for pipeline email alerts.").tag(config=True)
    smtp_sender = Unicode("contextlab@localhost", help="Sender address of pipeline email alerts.").tag(config=True)

    registry_class = Type(Registry, klass=Registry, help="The upstream registry service.").tag(config=True)
    router_class = Type(Router, klass=Router, help="The router that keeps upstream connections and catalogs.").tag(
        config=True
    )
    gateway_class = Type(Gateway, klass=Gateway, help="The gateway that decides, limits and redacts.").tag(config=True)

    service = Instance(ContextService, allow_none=True)
    store = Instance(StateStore, allow_none=True)
    log_buffer = Instance(LogBuffer, allow_none=True)

    @validate("copilot_models")
    def _valid_copilot_models(self, proposal: Any) -> list[dict[str, Any]]:
        # On the command line each model is a JSON object: --ContextLab.copilot_models='{"name": ...}'.
        from contextlab.copilot.llm import ModelSpec

        models = []
        for item in proposal["value"]:
            model = json.loads(item) if isinstance(item, str) else item
            if not isinstance(model, dict):
                raise TraitError(f"ContextLab.copilot_models: each model is an object, not {item!r}.")
            try:
                ModelSpec.from_dict(dict(model))
            except (TypeError, ValueError) as exc:
                raise TraitError(f"ContextLab.copilot_models: {exc}") from exc
            models.append(model)
        return models

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return str(Path(self.serverapp.root_dir) / ".contextlab")

    @property
    def root_dir(self) -> Path:
        return Path(self.serverapp.root_dir).expanduser().resolve()

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{Path(self.state_dir) / 'mlflow.db'}"

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

        self.events = EventBus(self.store)
        self._init_apps()
        providers = [self._build_provider(name) for name in self.providers]
        self._health_status: dict[str, Any] = {}
        self.tokens = TokenService(self.store)
        self.registry = self.registry_class(
            self.store, SecretBox(Path(self.secret_key_file or self._default_key_file()))
        )
        self.reviews = ToolReviews(self.store)
        self.router = self.router_class(
            self.registry,
            self.reviews,
            list_ttl_seconds=self.upstream_list_ttl_seconds,
            health_interval_seconds=self.upstream_health_seconds,
            breaker_threshold=self.breaker_threshold,
            breaker_cooldown_seconds=self.breaker_cooldown_seconds,
            max_sessions_per_upstream=self.max_sessions_per_upstream,
        )
        self.registry.listeners.append(self.router.registry_listener)
        self.registry.listeners.append(
            lambda name, action: self.events.publish("registry.changed", {"server": name, "action": action})
        )
        self.router.on_health.append(self._publish_health)
        self._apply_manifests()
        self.gateway = self.gateway_class(
            PolicyEngine(Path(self.policy_file or Path(self.state_dir) / "policy.yaml"), logger=self.log),
            jupyter_scopes=self.jupyter_user_scopes,
            jupyter_attributes=self.jupyter_user_attributes,
            builtin_attributes=self.builtin_attributes,
        )
        self.prompts = PromptStore(self.store)
        self.prompts.listeners.append(
            lambda prompt, action: self.events.publish("prompts.changed", {"prompt": prompt, "action": action})
        )
        self.prompt_sync = MlflowPromptSync(self.prompts, self.mlflow_uri) if self.mlflow_prompt_sync else None
        self.service = ContextService(
            providers,
            prompts=self.prompts,
            audit=AuditWriter(self.store),
            stats=self.request_stats,
            gateway=self.gateway,
            router=self.router,
            admin_resources=self._admin_resources(),
            max_request_bytes=self.max_request_bytes,
            session_idle_timeout=self.session_idle_timeout,
            resource_poll_seconds=self.resource_poll_seconds,
        )
        self.searcher: ToolSearch | None = None
        if self.tool_search:
            self.searcher = ToolSearch(
                Path(self.tool_index_dir or Path(self.state_dir) / "tool-index"),
                self.service.tool_catalog,
                self.gateway.visible,
                prompts=self.prompts,
                default_k=self.tool_search_k,
                pinned=self.pinned_tools,
            )
            self.service.attach_tool_search(self.searcher)
        self.store.save_manifests([m.model_dump(mode="json") for m in self.service.manifests])
        self._init_pipelines()
        self.copilot_records = CopilotRecords(self.store)
        self.cell_watcher = DeletedCellWatcher(self.copilot_records, self.root_dir)
        self.log.info(
            "ContextLab %s: MCP endpoint at %s with providers %s",
            contextlab.__version__,
            self.mcp_url_path,
            ", ".join(self.providers),
        )

    @property
    def apps_path(self) -> Path:
        return (self.root_dir / self.apps_dir).resolve()

    def _init_apps(self) -> None:
        from contextlab.apps.store import AppStore

        self.app_store = AppStore(self.store, self.apps_path, publish=self.events.publish)

    def _init_pipelines(self) -> None:
        from contextlab.pipelines.executors import ExecutorError, LocalExecutor, make_executor
        from contextlab.pipelines.runner import PipelineRunner
        from contextlab.pipelines.scheduler import RetentionPolicy, Scheduler, SmtpSettings

        try:
            executor = make_executor(self.pipeline_executor)
        except ExecutorError as exc:
            self.log.error("ContextLab pipelines fall back to the local executor: %s", exc)
            executor = LocalExecutor()
        self.pipelines = PipelineRunner(
            self.store,
            self.state_dir,
            tracking_uri=self.mlflow_uri,
            executor=executor,
            max_concurrent=self.pipeline_max_concurrent,
            cwd=self.root_dir,
            notebook_dirs=[self.root_dir / "notebooks", self.root_dir],
            env={"CONTEXTLAB_WORKSPACE": str(self.root_dir)},
            publish=self.events.publish,
        )
        self.scheduler = Scheduler(
            self.pipelines,
            smtp=SmtpSettings(host=self.smtp_host, port=self.smtp_port, sender=self.smtp_sender),
            retention=RetentionPolicy(timedelta(days=self.pipeline_retention_days), self.pipeline_keep_last),
        )

    def copilot_config(self) -> dict[str, Any]:
        """The Copilot's model configuration, as kernels fetch it (no secrets: keys stay in env vars)."""
        from contextlab.copilot.llm import OFFLINE_MODEL, ModelSpec

        models = [ModelSpec.from_dict(dict(m)) for m in self.copilot_models]
        if not any(m.name == OFFLINE_MODEL.name for m in models):
            models.append(OFFLINE_MODEL)
        chain = list(self.copilot_default_chain) or [m.name for m in models]
        return {
            "models": [dataclasses.asdict(m) for m in models],
            "default_chain": chain,
            "budgets": dict(self.copilot_budgets),
            "target_latency": dict(self.copilot_target_latency),
        }

    def _admin_resources(self) -> dict[str, AdminResource]:
        def recent_audit() -> str:
            if self.service is not None and self.service.audit is not None:
                self.service.audit.flush()
            return json.dumps({"entries": self.store.audit(limit=200)}, default=str)

        def recent_events() -> str:
            last = self.events.last_id()
            return json.dumps({"events": [e.to_dict() for e in self.events.since(max(0, last - 200), limit=200)]})

        return {
            "contextlab://audit/recent": AdminResource(
                "audit", "The newest 200 audit entries: caller, tool, decision, redactions, outcome.", recent_audit
            ),
            "contextlab://events/recent": AdminResource(
                "events",
                "The newest 200 gateway events (registry.changed, provider.health, …). Subscribe to hear of new ones.",
                recent_events,
                version=self.events.last_id,
            ),
        }

    def _default_key_file(self) -> Path:
        return Path(jupyter_data_dir()) / "contextlab" / "secret.key"

    def _apply_manifests(self) -> None:
        for manifest in self.registry_manifests:
            path = Path(manifest).expanduser()
            try:
                summary = self.registry.apply_manifest(parse_manifest(path.read_text(), source=str(path)))
            except (OSError, RegistryError) as exc:
                self.log.error("ContextLab registry manifest %s not applied: %s", path, exc)
                continue
            self.log.info("ContextLab registry manifest %s: %s", path, summary)

    def _publish_health(self, name: str, health: dict[str, Any]) -> None:
        if self._health_status.get(name) != health.get("status"):
            self._health_status[name] = health.get("status")
            self.events.publish("provider.health", {"server": name, **health})

    def initialize_handlers(self) -> None:
        admin = {"service": self.service, "tokens": self.tokens, "store": self.store}
        admin_extra = {
            **admin,
            "registry": self.registry,
            "router": self.router,
            "reviews": self.reviews,
            "prompts": self.prompts,
            "prompt_sync": self.prompt_sync,
            "copilot_records": self.copilot_records,
            "copilot_config": self.copilot_config,
            "pipelines": self.pipelines,
            "scheduler": self.scheduler,
        }
        self.handlers.extend(
            [
                (
                    r"/contextlab/mcp/?",
                    MCPHandler,
                    {
                        "service": self.service,
                        "tokens": self.tokens,
                        "logger": request_logger(self.serverapp.log, self.serverapp.log_level),
                    },
                ),
                (r"/contextlab/api/registry", rest.RegistryListHandler, admin_extra),
                (r"/contextlab/api/registry/manifest", rest.RegistryManifestHandler, admin_extra),
                (r"/contextlab/api/registry/health", rest.RegistryHealthHandler, admin_extra),
                (r"/contextlab/api/registry/([a-z][a-z0-9-]*)", rest.RegistryItemHandler, admin_extra),
                (
                    r"/contextlab/api/registry/([a-z][a-z0-9-]*)/(enable|disable|health)",
                    rest.RegistryActionHandler,
                    admin_extra,
                ),
                (r"/contextlab/api/reviews", rest.ReviewsHandler, admin_extra),
                (r"/contextlab/api/reviews/([a-z][a-z0-9-]*)/([^/]+)/approve", rest.ReviewsHandler, admin_extra),
                (r"/contextlab/api/prompts", rest.PromptsHandler, admin_extra),
                (r"/contextlab/api/prompts/([A-Za-z0-9_.-]+)", rest.PromptsHandler, admin_extra),
                (
                    r"/contextlab/api/prompts/([A-Za-z0-9_.-]+)/(diff|versions|rollback)",
                    rest.PromptsHandler,
                    admin_extra,
                ),
                (
                    r"/contextlab/api/prompts/([A-Za-z0-9_.-]+)/(labels)/([a-z][a-z0-9_-]*)",
                    rest.PromptsHandler,
                    admin_extra,
                ),
                (
                    r"/contextlab/api/copilot/(models|templates|usage|suggestions|feedback)",
                    rest.CopilotHandler,
                    admin_extra,
                ),
                (r"/contextlab/api/pipelines/runs", rest.PipelinesHandler, {**admin_extra, "what": "runs"}),
                (
                    r"/contextlab/api/pipelines/runs/([0-9a-f]{32})",
                    rest.PipelinesHandler,
                    {**admin_extra, "what": "runs"},
                ),
                (
                    r"/contextlab/api/pipelines/runs/([0-9a-f]{32})/notebook",
                    rest.PipelinesHandler,
                    {**admin_extra, "what": "notebook"},
                ),
                (r"/contextlab/api/pipelines/schedules", rest.PipelinesHandler, {**admin_extra, "what": "schedules"}),
                (r"/contextlab/apps/?([a-z0-9_/-]*)", AppsPageHandler),
                (r"/contextlab/api/apps", AppsHandler, {**admin, "apps": self.app_store}),
                (r"/contextlab/api/apps/(validate)", AppsHandler, {**admin, "apps": self.app_store}),
                (r"/contextlab/api/apps/([a-z][a-z0-9_-]{0,63})", AppsHandler, {**admin, "apps": self.app_store}),
                (
                    r"/contextlab/api/apps/([a-z][a-z0-9_-]{0,63})/(versions|er|publish|unpublish|rollback|migrate)",
                    AppsHandler,
                    {**admin, "apps": self.app_store},
                ),
                (r"/contextlab/api/tokens", rest.TokensHandler, admin),
                (r"/contextlab/api/tokens/([A-Za-z0-9]+)", rest.TokensHandler, admin),
                (r"/contextlab/api/audit", rest.AuditHandler, admin),
                (r"/contextlab/api/policy", rest.PolicyHandler, admin),
                (r"/contextlab/api/policy/reload", rest.PolicyHandler, admin),
                (
                    r"/contextlab/api/events",
                    rest.EventsStreamHandler,
                    {"bus": self.events, "tokens": self.tokens, "gateway": self.gateway},
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
            # The apps' DuckDB files belong to the apps server (another process): an open read-only
            # connection here would lock it out, since DuckDB lets one process at a time write a file.
            return SQLProvider.discover(self.root_dir, exclude=(self.apps_path,), **options)
        if name == "logs":
            return LogsProvider(self.log_buffer)
        if name == "docs":
            from contextlab.providers.docs import DocsProvider
            from contextlab.providers.docs_index import DocIndex

            self.docs_index = DocIndex(Path(self.docs_index_dir or Path(self.state_dir) / "docs-index"))
            return DocsProvider(self.docs_index)
        if name == "examples":
            from contextlab.providers.examples import ExamplesProvider

            served = SQLProvider.discover(self.root_dir, exclude=(self.apps_path,)) if not self.sql_databases else None
            paths = {n: self.root_dir / p for n, p in self.sql_databases.items()} if self.sql_databases else None
            return ExamplesProvider(self.store, paths if paths is not None else dict(served.databases))
        if name == "apps":
            from contextlab.providers.apps import AppsProvider

            return AppsProvider(self.app_store)
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
        serverapp.event_logger.add_listener(schema_id=CONTENTS_EVENTS, listener=self.cell_watcher.on_contents_event)
        self._export_kernel_connection(serverapp)
        if self.searcher is not None:
            self._index_task = asyncio.create_task(self._warm_tool_index(), name="contextlab-tool-index")
        self._policy_task = asyncio.create_task(self._watch_policy(), name="contextlab-policy-watch")
        if getattr(self, "docs_index", None) is not None and self.docs_index_on_start:
            self._docs_task = asyncio.create_task(self._refresh_docs_index(), name="contextlab-docs-index")
        if self.pipeline_scheduler:
            self._scheduler_task = asyncio.create_task(self._run_scheduler(), name="contextlab-scheduler")
        if self.freeze_startup_objects:
            gc.collect()
            gc.freeze()
        if self.show_connection_banner:
            print(
                connection_banner(serverapp.connection_url, serverapp.identity_provider.token or ""),
                file=sys.stdout,
                flush=True,
            )

    def _export_kernel_connection(self, serverapp: Any) -> None:
        # Kernels this server starts inherit its environment: that is how %%copilot finds the endpoint.
        os.environ["CONTEXTLAB_MCP_URL"] = mcp_url(serverapp.connection_url)
        token = serverapp.identity_provider.token
        if not token:  # password or external auth: give kernels a token of their own, valid for a day
            token, _ = self.tokens.create(
                "kernels",
                ["*"],
                expires_in=timedelta(days=1),
                attributes=self.jupyter_user_attributes.get("*") or {},
            )
        os.environ["CONTEXTLAB_TOKEN"] = token
        # The apps server (started through jupyter-server-proxy) and terminals work on this workspace.
        os.environ["CONTEXTLAB_WORKSPACE"] = str(self.root_dir)
        os.environ["CONTEXTLAB_APPS_DIR"] = str(self.apps_path)
        os.environ["CONTEXTLAB_STATE_URL"] = str(self.store.engine.url.render_as_string(hide_password=False))

    async def _warm_tool_index(self) -> None:
        # Build the index before the first search needs it; a failure is retried by that search.
        try:
            await self.searcher.ensure_fresh()
        except Exception:
            self.log.exception("ContextLab could not build the tool index; search_tools will retry")

    async def _watch_policy(self) -> None:
        # The engine logs load errors itself and keeps the previous policy in force.
        while True:
            await asyncio.sleep(self.policy_check_seconds)
            self.gateway.policy.reload()

    async def _refresh_docs_index(self) -> None:
        from contextlab.providers.docs_index import DocIndexError

        try:
            report = await asyncio.to_thread(
                self.docs_index.build, self.root_dir, list(self.docs_sources), progress=False
            )
            self.log.info("ContextLab docs index: %s", report.summary())
        except (DocIndexError, ValueError) as exc:
            self.log.error("ContextLab docs index not refreshed: %s", exc)
        except Exception:
            self.log.exception("ContextLab docs index not refreshed")

    async def _run_scheduler(self) -> None:
        # Ticks run in a worker thread: they touch the store and may start runs.
        while True:
            try:
                await asyncio.to_thread(self.scheduler.tick)
            except Exception:
                self.log.exception("ContextLab scheduler tick failed; trying again")
            await asyncio.sleep(self.pipeline_tick_seconds)

    async def stop_extension(self) -> None:
        if getattr(self, "_policy_task", None) is not None:
            self._policy_task.cancel()
        if getattr(self, "_scheduler_task", None) is not None:
            self._scheduler_task.cancel()
        if getattr(self, "pipelines", None) is not None:
            self.pipelines.close(wait=False)
        if self.service is not None:
            await self.service.stop()
        if getattr(self, "prompt_sync", None) is not None:
            self.prompt_sync.close()
        if getattr(self, "searcher", None) is not None:
            self.searcher.close()
        if getattr(self, "events", None) is not None:
            self.events.close()
        if self.log_buffer is not None:
            for logger in self._log_buffer_hosts():
                logger.removeHandler(self.log_buffer)
        if self.store is not None:
            self.store.close()
