"""The offline model (SmolLM2-135M-Instruct, `contextlab.copilot.local`) on this machine.

Measures, into a fresh temporary cache unless `--cache-dir` is given:

- first_load_s: the first load: GGUF file -> dequantised float32 model, plus writing the cache
  (`dequantise_s` is the GGUF part alone, `cache_write_s` the rest);
- cached_load_s: a second backend instance loading the cache in the same process;
- cached_load_fresh_process_s: the same in a new Python process (`import_s` is its imports);
- generation: `--tokens` new tokens (greedy, no early stop), `--repeat` times: tokens/s,
  time to the first token, and the prompt's size.

Prints one JSON document.

    python benchmarks/local_model.py [--tokens 64] [--repeat 3] [--threads N] [--engine transformers]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = [{"role": "user", "content": "Write a long story about a dragon who lives in a library."}]

FRESH_PROCESS = """
import json, sys, time
t0 = time.perf_counter()
from contextlab.copilot.local import LocalModelBackend
import torch, transformers
t1 = time.perf_counter()
b = LocalModelBackend(cache_dir=sys.argv[1], threads=int(sys.argv[2]))
b.load()
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "source": b.load_source}))
"""


def _stamp(arrivals: list[float]):
    """An on_token callback that records when each piece arrived."""
    return lambda _piece: arrivals.append(time.perf_counter())


def _cpu_pressure() -> dict:
    """The share of time some task waited for a CPU (PSI), and the load average: is the machine busy?"""
    out: dict = {"loadavg_1m": round(os.getloadavg()[0], 2)}
    try:
        fields = Path("/proc/pressure/cpu").read_text().split("\n")[0].split()[1:]
        out.update({f"cpu_some_{k}": float(v) for k, v in (f.split("=") for f in fields) if k != "total"})
    except (OSError, ValueError):
        pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per generation (default 64)")
    parser.add_argument("--repeat", type=int, default=3, help="generations to time (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: usable CPUs - 1, at most 8)")
    parser.add_argument(
        "--engine",
        choices=["auto", "transformers", "llama-cpp"],
        default="transformers",
        help="CONTEXTLAB_LOCAL_ENGINE for the run (default transformers)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="cache to build (deleted first); default: a temporary directory"
    )
    args = parser.parse_args()
    os.environ["CONTEXTLAB_LOCAL_ENGINE"] = args.engine

    from contextlab.copilot.local import MANIFEST, LocalModelBackend, find_gguf, usable_cpus

    scratch = None
    if args.cache_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="contextlab-bench-"))
        cache = scratch / "smollm2-135m-instruct"
    else:
        cache = args.cache_dir
        shutil.rmtree(cache, ignore_errors=True)
    pressure_before = _cpu_pressure()
    try:
        first = LocalModelBackend(cache_dir=cache, threads=args.threads)
        started = time.perf_counter()
        first.load()
        first_load = time.perf_counter() - started
        result: dict = {
            "model": first.model,
            "engine": first.engine,
            "gguf": str(find_gguf()),
            "threads": first.threads,
            "first_load_s": round(first_load, 2),
            "first_load_source": first.load_source,
        }
        if first.engine == "transformers":
            manifest = json.loads((cache / MANIFEST).read_text())
            result["dequantise_s"] = manifest["dequantise_seconds"]
            result["cache_write_s"] = round(first_load - manifest["dequantise_seconds"], 2)
            result["cache_bytes"] = sum(manifest["files"].values())
            second = LocalModelBackend(cache_dir=cache, threads=args.threads)
            started = time.perf_counter()
            second.load()
            result["cached_load_s"] = round(time.perf_counter() - started, 3)
            result["cached_load_source"] = second.load_source
            second.close()
            fresh = subprocess.run(
                [sys.executable, "-c", FRESH_PROCESS, str(cache), str(first.threads)],
                capture_output=True,
                text=True,
                check=True,
            )
            measured = json.loads(fresh.stdout.strip().splitlines()[-1])
            result["cached_load_fresh_process_s"] = round(measured["load_s"], 3)
            result["import_s"] = round(measured["import_s"], 2)

        first.complete(PROMPT, max_tokens=4)  # warm-up
        runs = []
        for _ in range(args.repeat):
            arrivals: list[float] = []
            started = time.perf_counter()
            answer = first.complete(PROMPT, max_tokens=args.tokens, on_token=_stamp(arrivals))
            runs.append(
                {
                    "completion_tokens": answer.completion_tokens,
                    "seconds": answer.latency_s,
                    "tokens_per_s": answer.completion_tokens / answer.latency_s,
                    "first_token_s": (arrivals[0] - started) if arrivals else None,
                    "finish_reason": answer.finish_reason,
                }
            )
        result["generation"] = {
            "prompt_tokens": answer.prompt_tokens,
            "max_tokens": args.tokens,
            "runs": len(runs),
            "completion_tokens": [r["completion_tokens"] for r in runs],
            "tokens_per_s_median": round(statistics.median(r["tokens_per_s"] for r in runs), 2),
            "first_token_s_median": round(statistics.median(r["first_token_s"] or 0 for r in runs), 3),
            "seconds_median": round(statistics.median(r["seconds"] for r in runs), 3),
        }
        first.close()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    import torch
    import transformers

    result["machine"] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "usable_cpus": usable_cpus(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_pressure_before": pressure_before,
        "cpu_pressure_after": _cpu_pressure(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
