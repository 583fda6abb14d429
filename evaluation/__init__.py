"""Evaluation primitives: tool-selection suites, the BFCL loader, the AST checker and retrieval metrics.

Everything here uses only the standard library, so importing the package stays cheap.
"""

from .ast_checker import CheckResult, check_call, check_calls, reference_calls, standardize_string
from .bfcl import (
    DEFAULT_CATEGORIES,
    RetrievalCase,
    ToolPool,
    bfcl_data_dir,
    bfcl_function_to_tool,
    load_bfcl_suite,
    load_bfcl_tool_pool,
    mcp_safe_name,
)
from .languages import language_for_category, parse_literal, render_literal
from .metrics import hit_at_k, mean_metrics, ndcg_at_k, recall_at_k, reciprocal_rank
from .suite import AcceptedCall, SuiteFormatError, ToolSelectionCase, ToolSelectionSuite

__all__ = [
    "DEFAULT_CATEGORIES",
    "AcceptedCall",
    "CheckResult",
    "RetrievalCase",
    "SuiteFormatError",
    "ToolPool",
    "ToolSelectionCase",
    "ToolSelectionSuite",
    "bfcl_data_dir",
    "bfcl_function_to_tool",
    "check_call",
    "check_calls",
    "hit_at_k",
    "language_for_category",
    "load_bfcl_suite",
    "load_bfcl_tool_pool",
    "mcp_safe_name",
    "mean_metrics",
    "ndcg_at_k",
    "parse_literal",
    "recall_at_k",
    "reciprocal_rank",
    "reference_calls",
    "render_literal",
    "standardize_string",
]
