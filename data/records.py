"""Record schemas and atomic JSONL I/O: the contract between the loop's stages.

Every file is written to a temporary name in the same folder and renamed, so a reader (or a resumed
run) sees either the old file or the whole new one, never half of it.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Self, Sequence, TypeVar

import jsonlines
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    field_validator,
    model_validator,
)

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)


class DataError(ValueError):
    """Bad user data. The message names the file and line (or field) to fix."""


class MCQItem(BaseModel):
    """A multiple-choice question, in the schema of ../shared/data/clinical (SOURCES.md)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    question: str
    options: dict[str, str]
    answer_idx: str
    meta_info: str = ""
    ability_path: list[str] | None = None
    # A worked solution that ends by stating the answer ("... 47 + 38 = 85. The answer is 85."): when
    # set, it is the reply a model is trained on for this item, instead of "The answer is C." (domains
    # answered in generate mode: the teacher's own solution, checked against the key; data.domains).
    solution: str | None = None

    @field_validator("question")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("question is empty")
        return v

    @field_validator("options")
    @classmethod
    def _letters(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) < 2:
            raise ValueError(f"needs at least 2 options, got {len(v)}")
        expected = [chr(ord("A") + i) for i in range(len(v))]
        if list(v) != expected:
            raise ValueError(f"option letters must run {''.join(expected)} in order, got {''.join(v)}")
        if any(not str(t).strip() for t in v.values()):
            raise ValueError("an option text is empty")
        return v

    @model_validator(mode="after")
    def _answer_in_options(self) -> "MCQItem":
        if self.answer_idx not in self.options:
            raise ValueError(f"answer_idx {self.answer_idx!r} is not one of the options {''.join(self.options)}")
        return self

    @property
    def source(self) -> str:
        """The dataset an item came from: the first field of meta_info (``mmlu``), else the id prefix."""
        if self.meta_info:
            return self.meta_info.split(":", 1)[0]
        return self.id.rsplit("-", 1)[0]


class GeneratedItem(MCQItem):
    """A teacher-written MCQ with its provenance."""

    model_config = ConfigDict(extra="forbid")

    explanation: str = ""
    target_node: str
    exemplar_ids: list[str] = []
    generator: str = ""  # model spec
    seed: int | None = None


class Reply(BaseModel):
    """The student's answer to one MCQ, as scored (a line of ``replies.jsonl``).

    Written by scoring (eval), read by metrics, the tree's ``record`` and the loop. ``prompt`` is the
    rendered user text (without few-shot turns), ``output`` what the model produced (generate mode) or
    a summary of the letters' log-probs (logprob mode), ``parsed_answer`` the letter read from it (None
    when nothing could be read), ``key`` the correct letter. ``source``, ``n_options`` (for the chance
    level) and ``node`` (the ability-tree node it was counted under) let a file of replies be summarised
    and compared without the data files it came from.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    prompt: str
    output: str
    parsed_answer: str | None = None  # None: no letter could be read (written files omit it)
    key: str
    correct: bool
    logprobs: dict[str, float] = {}
    mode: Literal["logprob", "generate"] = "logprob"
    source: str | None = None
    n_options: int | None = None
    node: str | None = None


# ---------------------------------------------------------------------------------------------- I/O


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at the first write
    os.umask(mask)
    return mask


def usual_mode(directory: bool = False) -> int:
    """The permissions a plain ``open``/``mkdir`` would give (mkstemp/mkdtemp give 0600/0700)."""
    return (0o777 if directory else 0o666) & ~_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, usual_mode())  # mkstemp makes 0600; a written file gets the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def check_writable(path: str | os.PathLike, option: str, *, folder: bool = True) -> Path:
    """Refuse, before any work, an output that could not be written: ``path`` (a folder, or a file when
    ``folder`` is False) exists as the wrong kind, or cannot be created where it would go. A folder is
    made and removed in ``path`` or its nearest existing parent, so every reason (missing parent, no
    permission, a read-only or virtual filesystem such as /proc, where even root cannot write) is found
    without writing anything that stays. DataError names ``option``."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if folder else "a file"
        raise DataError(f"{option}: {path} exists and is not {kind}; choose another {option}")
    probe = path if folder else path.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise DataError(f"{option}: {probe} exists and is not a folder; choose another {option}")
    try:
        Path(tempfile.mkdtemp(prefix=".atkd-write-check-", dir=probe)).rmdir()
    except OSError as e:
        raise DataError(f"{option}: cannot create {path} ({e.strerror or e} in {probe}); choose another {option}") from None
    return path


def yaml_error(path: str | os.PathLike, e: Exception) -> DataError:
    """One line for a YAML file that does not parse: ``file:line: not valid YAML (problem)`` (PyYAML's own
    message spans several lines)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or str(e).splitlines()[0]
    return DataError(f"{where}: not valid YAML ({problem})")


def read_yaml(path: str | os.PathLike) -> Any:
    """A YAML file's content; a missing file, bad bytes or bad YAML is a one-line DataError naming it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise yaml_error(path, e) from None


def read_index(file: Path, fmt: str, what: str) -> dict[str, Any]:
    """A JSON index written last as a folder's commit point, checked for its ``format``; DataError names the file."""
    if not file.is_file():
        raise DataError(f"{file}: not found; {file.parent} holds no {what}")
    try:
        index = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{file}: not valid JSON ({e.msg})") from None
    if not isinstance(index, dict) or index.get("format") != fmt:
        raise DataError(f"{file}: not an index of {what} (expected format {fmt!r})")
    return index


def _to_dict(row: BaseModel | dict) -> dict:
    return row.model_dump(mode="json", exclude_none=True) if isinstance(row, BaseModel) else row


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _loads(line: str) -> Any:
    return json.loads(line.rstrip("\r\n"))  # the newline would read as a control character in a string


def write_jsonl(path: str | os.PathLike, rows: Iterable[BaseModel | dict]) -> Path:
    """Write records as JSON lines (jsonlines), atomically."""
    buffer = io.StringIO()
    with jsonlines.Writer(buffer, dumps=_dumps) as writer:
        writer.write_all(_to_dict(r) for r in rows)
    return atomic_write_text(path, buffer.getvalue())


class _NumberedLines:
    """The lines of a file, remembering the number of the last one handed out (for error messages)."""

    def __init__(self, lines: Iterable[str] | Iterable[bytes]) -> None:
        self._lines = iter(lines)
        self.lineno = 0

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> str | bytes:
        line = next(self._lines)
        self.lineno += 1
        return line


def first_error(e: ValidationError, whole: str = "record") -> tuple[str, str]:
    """(dotted field path, message) of a pydantic error's first entry: enough to fix the input."""
    err = e.errors()[0]
    return ".".join(str(p) for p in err["loc"]) or whole, err["msg"]


def read_jsonl(path: str | os.PathLike, model: type[T] | Callable[[dict], type[T]] | None = None) -> list[Any]:
    """Read a JSONL file (jsonlines); with ``model`` (a pydantic class, or a function of the row choosing one),
    validate each line.

    Raises DataError naming ``file:line`` for a missing file, a line that is not JSON, or a record
    that does not fit the schema. Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows: list[Any] = []
    with path.open("rb") as f:  # bytes: jsonlines decodes each line, so a bad byte is named by its line
        lines = _NumberedLines(f)
        reader = jsonlines.Reader(lines, loads=_loads)
        while True:
            try:
                obj = reader.read(skip_empty=True, allow_none=True)
            except EOFError:
                break
            except jsonlines.InvalidLineError as e:
                cause = e.__cause__
                if isinstance(cause, UnicodeDecodeError):
                    raise DataError(f"{path}:{e.lineno}: not UTF-8 text ({cause.reason} at byte {cause.start})") from None
                if isinstance(cause, json.JSONDecodeError):
                    raise DataError(f"{path}:{e.lineno}: not valid JSON ({cause.msg}, column {cause.colno})") from None
                raise DataError(f"{path}:{e.lineno}: {e}") from None
            lineno = lines.lineno
            if model is None:
                rows.append(obj)
                continue
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            cls = model if isinstance(model, type) else model(obj)
            try:
                rows.append(cls.model_validate(obj))
            except ValidationError as e:
                field, msg = first_error(e)
                raise DataError(f"{path}:{lineno}: field {field!r}: {msg}") from None
    return rows


def read_items(
    paths: Sequence[str | os.PathLike], model: type[T] | Callable[[dict], type[T]] = MCQItem, *, allow_empty: bool = True
) -> list[MCQItem]:
    """Read MCQ files (``model`` as in ``read_jsonl``); ids must be unique across them. With
    ``allow_empty=False`` a file without a record is a DataError naming it (a command that needs items
    would otherwise do nothing and report success)."""
    items: list[MCQItem] = []
    seen: dict[str, Path] = {}
    for p in paths:
        rows = read_jsonl(p, model)
        if not rows and not allow_empty:
            raise DataError(f"{p}: no items (the file is empty)")
        for item in rows:
            if item.id in seen:
                raise DataError(f"{p}: duplicate id {item.id!r} (also in {seen[item.id]})")
            seen[item.id] = Path(p)
            items.append(item)
    return items
