"""Adapters from Jupyter's kernel and session managers to the providers' source protocols."""

from __future__ import annotations

from typing import Any


class JupyterKernelSource:
    """Running kernels and their notebooks, read from a Jupyter ServerApp."""

    def __init__(self, serverapp: Any) -> None:
        self.serverapp = serverapp

    async def kernels(self) -> list[dict[str, Any]]:
        notebooks: dict[str, list[str]] = {}
        for session in await self.serverapp.session_manager.list_sessions():
            kernel = session.get("kernel") or {}
            if kernel.get("id"):
                notebooks.setdefault(kernel["id"], []).append(session.get("path") or session.get("name", ""))
        return [
            {
                "id": model["id"],
                "name": model.get("name", ""),
                "execution_state": model.get("execution_state"),
                "last_activity": model.get("last_activity"),
                "connections": model.get("connections", 0),
                "notebooks": notebooks.get(model["id"], []),
            }
            for model in self.serverapp.kernel_manager.list_kernels()
        ]

    def manager(self, kernel_id: str) -> Any:
        kernel_manager = self.serverapp.kernel_manager
        if kernel_id not in kernel_manager:  # get_kernel would raise a tornado 404 instead
            raise KeyError(kernel_id)
        return kernel_manager.get_kernel(kernel_id)

    async def session_count(self) -> int:
        return len(await self.serverapp.session_manager.list_sessions())
