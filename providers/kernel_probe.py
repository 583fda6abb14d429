"""Source of the probe that runs inside a Python kernel to describe its live variables.

It is sent as a `user_expressions` entry of a silent execute request, so it adds nothing to
the user's namespace, history or execution counter. It must run on any Python 3.8+ kernel
with no ContextLab installed, so it uses only the standard library and duck-typing.
"""

PROBE_SOURCE = r"""
def _probe(ns, hidden, only, sample_rows, max_vars, max_chars):
    import json, types
    skip_types = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, type)

    def type_name(v):
        t = type(v)
        return t.__qualname__ if t.__module__ == "builtins" else t.__module__ + "." + t.__qualname__

    def clip(text):
        return text if len(text) <= max_chars else text[:max_chars] + "..."

    def describe(name, v):
        d = {"name": name, "type": type_name(v), "kind": "object"}
        tn = d["type"]
        try:
            if tn.startswith("pandas.") and tn.endswith(".DataFrame"):
                d.update(kind="dataframe", library="pandas", shape=list(v.shape),
                         columns=[{"name": str(c), "dtype": str(t)} for c, t in v.dtypes.items()],
                         memory_bytes=int(v.memory_usage(index=True, deep=False).sum()),
                         sample=json.loads(v.head(sample_rows).to_json(orient="records", date_format="iso",
                                                                       default_handler=str)))
            elif tn.startswith("polars.") and tn.endswith(".DataFrame"):
                d.update(kind="dataframe", library="polars", shape=list(v.shape),
                         columns=[{"name": str(c), "dtype": str(t)} for c, t in v.schema.items()],
                         memory_bytes=int(v.estimated_size()),
                         sample=json.loads(json.dumps(v.head(sample_rows).to_dicts(), default=str)))
            elif tn.startswith("pandas.") and tn.endswith(".Series"):
                d.update(kind="series", library="pandas", shape=list(v.shape), dtype=str(v.dtype),
                         series_name=None if v.name is None else str(v.name),
                         sample=json.loads(v.head(sample_rows).to_json(orient="values", date_format="iso",
                                                                       default_handler=str)))
            elif tn.startswith("polars.") and tn.endswith(".Series"):
                d.update(kind="series", library="polars", shape=[len(v)], dtype=str(v.dtype),
                         series_name=v.name, sample=json.loads(json.dumps(v.head(sample_rows).to_list(),
                                                                          default=str)))
            elif tn == "numpy.ndarray":
                d.update(kind="array", library="numpy", shape=list(v.shape), dtype=str(v.dtype),
                         memory_bytes=int(v.nbytes))
            elif isinstance(v, (bool, int, float, complex)):
                d.update(kind="scalar", value=clip(repr(v)))
            elif isinstance(v, (str, bytes)):
                d.update(kind="text", length=len(v), value=clip(repr(v)))
            elif isinstance(v, (list, tuple, set, frozenset, dict)):
                d.update(kind="collection", length=len(v), value=clip(repr(v)))
            else:
                d["value"] = clip(repr(v))
        except Exception as exc:
            d["error"] = "%s: %s" % (type(exc).__name__, exc)
        return d

    if only is not None:
        if only not in ns:
            return json.dumps({"missing": only})
        return json.dumps({"variables": [describe(only, ns[only])], "total": 1}, default=str)
    names = sorted(k for k, v in list(ns.items())
                   if not k.startswith("_") and k not in hidden and not isinstance(v, skip_types))
    out = [describe(k, ns[k]) for k in names[:max_vars]]
    return json.dumps({"variables": out, "total": len(names)}, default=str)
"""


def probe_expression(only: str | None, sample_rows: int, max_vars: int, max_chars: int) -> str:
    """A single Python expression that evaluates, in the kernel, to the probe's JSON string."""
    args = f"{only!r}, {int(sample_rows)}, {int(max_vars)}, {int(max_chars)}"
    return (
        "(lambda __src, __ip: (lambda __g: (exec(__src, __g), "
        f"__g['_probe'](__ip.user_ns, set(__ip.user_ns_hidden), {args}))[1])({{}}))"
        f"({PROBE_SOURCE!r}, get_ipython())"
    )
