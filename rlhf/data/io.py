"""Read and write records as JSON Lines (optionally gzipped), Parquet, CSV (read only) or Hugging Face datasets.

All writers are atomic: they write a temp file in the target folder and rename it into place. A write that fails
(a full disk, a folder without write permission) raises FileFault naming the file; the temp file is removed and the
file keeps its previous content.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import os
import tempfile
import types
import typing
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import IO, Any, TypeVar

from rlhf.data.faults import fault_point
from rlhf.data.records import RecordError

RecordT = TypeVar("RecordT")
PathLike = str | os.PathLike[str]
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json")
PARQUET_SUFFIX = ".parquet"
CSV_SUFFIX = ".csv"


# ---------------------------------------------------------------- atomic writes


class FileFault(OSError):
    """A file that cannot be written or read back: the message names the file, what went wrong and how to recover."""

    def __init__(self, path: PathLike, problem: str, recovery: str) -> None:
        self.path, self.problem, self.recovery = str(path), problem, recovery
        super().__init__(f"{path}: {problem}; {recovery}")


def os_error_in(error: BaseException) -> OSError | None:
    """The OSError `error` is or was raised from (torch.save, for one, turns a failed write into a RuntimeError)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def write_fault(path: PathLike, error: OSError) -> FileFault:
    """The FileFault of a failed atomic write of `path` (nothing was changed: the old file, if any, is still there)."""
    reason = error.strerror or str(error)
    return FileFault(
        path, f"cannot write ({reason})", "the file was left as it was; free space or fix the permissions and run again"
    )


@contextlib.contextmanager
def _atomic_file(path: PathLike) -> Iterator[IO[bytes]]:
    """Yield a binary handle on a temp file in the target folder; on success fsync it and rename onto ``path``. An
    OSError on the way (e.g. ENOSPC, EACCES) becomes a FileFault naming ``path``, with the temp file removed."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # the writer's pid ends the name: a temp file left by a killed process is found and removed (rlhf/run.py)
        descriptor, temp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{os.getpid()}"
        )
    except OSError as error:
        raise write_fault(target, error) from error
    temp_path = Path(temp_name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
        os.chmod(temp_path, mode)
        fault_point(f"before rename {target}")
        os.replace(temp_path, target)
        fault_point(f"after rename {target}")
    except BaseException as error:
        temp_path.unlink(missing_ok=True)
        cause = None if isinstance(error, FileFault) else os_error_in(error)
        if cause is not None:
            raise write_fault(target, cause) from error
        raise


def atomic_write_with(path: PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(handle)`` on a temp file and rename it onto ``path`` (e.g. ``torch.save(obj, handle)``)."""
    with _atomic_file(path) as handle:
        write(handle)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, then rename)."""
    with _atomic_file(path) as handle:
        handle.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically; nothing is written if it cannot serialise."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- JSON Lines


def _is_gzip(path: PathLike) -> bool:
    return str(path).endswith(".gz")


MAX_JSON_DEPTH = 100  # deeper values are refused: copying or writing them would exhaust Python's stack


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (0 for a scalar)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level + 1)
            stack += [(child, level + 1) for child in (item.values() if isinstance(item, dict) else item)]
    return deepest


def load_json(text: str, where: str, field: str = "") -> Any:
    """``json.loads`` whose every failure is a RecordError at ``where``: bad JSON, numbers too long for Python,
    nesting deeper than MAX_JSON_DEPTH, and lone UTF-16 surrogates (``"\\ud800"``), which no UTF-8 file can hold."""

    def invalid(detail: str) -> RecordError:
        return RecordError(f"invalid JSON: {detail}", field=field, where=where)

    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise invalid(f"{error.msg} at column {error.colno}") from None
    except ValueError as error:  # an integer of more than sys.get_int_max_str_digits() digits
        raise invalid(str(error).partition(";")[0]) from None
    except RecursionError:
        raise invalid(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _depth(value) > MAX_JSON_DEPTH:
        raise invalid(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if "\\u" in text:  # only a \u escape can give a lone surrogate
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as error:
            raise invalid(f"lone UTF-16 surrogate {error.object[error.start]!r} (half of a pair)") from None
    return value


def _parse_jsonl_line(raw_line: bytes, where: str) -> dict[str, Any] | None:
    """One JSON Lines line -> its object (None for a blank line); bad UTF-8, JSON or non-objects raise RecordError."""
    try:
        line = raw_line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RecordError(f"expected UTF-8 text: {error.reason} at byte {error.start}", where=where) from None
    if not line.strip():
        return None
    row = load_json(line, where)
    if not isinstance(row, dict):
        raise RecordError(f"expected one JSON object per line (JSON Lines), got {type(row).__name__}", where=where)
    return row


def _numbered_lines(handle: IO[bytes], path: PathLike) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line), a leading UTF-8 BOM dropped; a corrupt or cut gzip stream raises RecordError."""
    number = 0
    try:
        for number, raw_line in enumerate(handle, start=1):
            yield number, raw_line.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw_line
    except (OSError, EOFError, zlib.error) as error:
        kind = "gzip file" if _is_gzip(path) else "file"
        raise RecordError(f"not a readable {kind}: {error}", where=f"{path}:{number + 1}") from None


def iter_jsonl_rows(path: PathLike, errors: list[RecordError] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (``"file:line"``, row) for each non-blank line; bad UTF-8, JSON or non-objects raise RecordError,
    or, when an ``errors`` list is given, are appended to it and skipped (to report every bad line at once)."""
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rb") as handle:
        for line_number, raw_line in _numbered_lines(handle, path):
            where = f"{path}:{line_number}"
            try:
                row = _parse_jsonl_line(raw_line, where)
            except RecordError as error:
                if errors is None:
                    raise
                errors.append(error)
                continue
            if row is not None:
                yield where, row


def read_jsonl(path: PathLike, record_type: type[RecordT]) -> list[RecordT]:
    """Read records from a ``.jsonl`` (or ``.jsonl.gz``) file; errors name file:line and field."""
    return [record_type.from_dict(row, where) for where, row in iter_jsonl_rows(path)]  # type: ignore[attr-defined]


def _to_dict(record: Any) -> dict[str, Any]:
    if isinstance(record, dict):  # plain rows (e.g. TRL preference rows) are written as they are
        return record
    if not hasattr(record, "to_dict"):
        raise TypeError(f"expected a record with to_dict(), got {type(record).__name__}")
    return record.to_dict()


def _write_json_lines(stream: IO[bytes], records: Iterable[Any], path: PathLike) -> None:
    for number, record in enumerate(records, start=1):
        try:
            line = json.dumps(_to_dict(record), ensure_ascii=False)
        except (TypeError, ValueError) as error:
            raise RecordError(f"record {number} cannot be written as JSON: {error}", where=str(path)) from error
        stream.write(line.encode("utf-8") + b"\n")


def write_jsonl(path: PathLike, records: Iterable[Any]) -> None:
    """Write records (or plain dict rows) one JSON object per line, atomically; a ``.gz`` suffix gzips. On error
    nothing is left."""
    with _atomic_file(path) as handle:
        if _is_gzip(path):
            with gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0) as stream:
                _write_json_lines(stream, records, path)
        else:
            _write_json_lines(handle, records, path)


# ---------------------------------------------------------------- Parquet and datasets rows


def _meta_to_column(row: dict[str, Any]) -> dict[str, Any]:
    """Parquet/arrow rows keep ``meta`` as a JSON string (its keys vary from record to record)."""
    if "meta" in row:
        row = dict(row, meta=json.dumps(row["meta"], ensure_ascii=False))
    return row


def _meta_from_column(row: dict[str, Any], where: str) -> dict[str, Any]:
    meta = row.get("meta")
    if isinstance(meta, str):
        row = dict(row, meta=load_json(meta, where, field="meta"))
    return row


def _arrow_type(annotation: Any) -> Any:
    """Arrow column type for a record field annotation (str, int, bool, dict, list[str], list[int], X | None)."""
    import pyarrow as pa  # lazy: a heavy import, needed for Parquet files only

    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _arrow_type(inner)
    if typing.get_origin(annotation) is list:
        return pa.list_(_arrow_type(typing.get_args(annotation)[0]))
    simple = {str: pa.string(), int: pa.int64(), bool: pa.bool_(), float: pa.float64(), dict: pa.string()}
    base = typing.get_origin(annotation) or annotation
    assert base in simple, f"no arrow type for record field annotation {annotation!r}"
    return simple[base]


def arrow_schema(record_type: type) -> Any:
    """The pyarrow schema used to store ``record_type`` (``meta`` as a JSON string)."""
    import pyarrow as pa  # lazy: a heavy import, needed for Parquet files only

    hints = typing.get_type_hints(record_type)
    return pa.schema([pa.field(f.name, _arrow_type(hints[f.name])) for f in fields(record_type)])


def write_parquet(path: PathLike, records: Sequence[Any]) -> None:
    """Write records of one type to a Parquet file atomically; ``meta`` is stored as a JSON string."""
    import pyarrow as pa  # lazy: a heavy import, needed for Parquet files only
    import pyarrow.parquet as pq  # lazy: a heavy import, needed for Parquet files only

    if not records:
        raise RecordError("cannot infer a schema from no records; write at least one", where=str(path))
    record_type = type(records[0])
    for number, record in enumerate(records, start=1):
        if type(record) is not record_type:
            raise RecordError(
                f"record {number} is a {type(record).__name__}; a Parquet file holds one record type "
                f"({record_type.__name__})",
                where=str(path),
            )
    try:
        rows = [_meta_to_column(_to_dict(record)) for record in records]
    except (TypeError, ValueError) as error:
        raise RecordError(f"a record's meta cannot be written as JSON: {error}", where=str(path)) from error
    table = pa.Table.from_pylist(rows, schema=arrow_schema(record_type))
    with _atomic_file(path) as handle:
        pq.write_table(table, handle)


def write_parquet_rows(path: PathLike, rows: Sequence[dict[str, Any]]) -> None:
    """Write plain dict rows (columns inferred by arrow, e.g. message lists as lists of structs) atomically."""
    import pyarrow as pa  # lazy: a heavy import, needed for Parquet files only
    import pyarrow.parquet as pq  # lazy: a heavy import, needed for Parquet files only

    if not rows:
        raise RecordError("cannot infer a schema from no rows; write at least one", where=str(path))
    try:
        table = pa.Table.from_pylist(list(rows))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise RecordError(f"rows cannot be stored in one Parquet table: {error}", where=str(path)) from None
    with _atomic_file(path) as handle:
        pq.write_table(table, handle)


def iter_parquet_rows(path: PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (``"file: row N"``, row) for each row of a Parquet file (N is 1-based)."""
    import pyarrow as pa  # lazy: a heavy import, needed for Parquet files only
    import pyarrow.parquet as pq  # lazy: a heavy import, needed for Parquet files only

    try:
        table = pq.read_table(path)
    except pa.ArrowInvalid as error:
        raise RecordError(f"not a readable Parquet file: {error}", where=str(path)) from None
    try:
        rows = table.to_pylist()
    except UnicodeDecodeError as error:  # a text column holding bytes that are not UTF-8
        where = f"{path}: row {_first_undecodable_row(table)}"
        raise RecordError(f"expected UTF-8 text: {error.reason}", where=where) from None
    for number, row in enumerate(rows, start=1):
        yield f"{path}: row {number}", row


def _first_undecodable_row(table: Any) -> int:
    """The 1-based number of the first row of an arrow table whose text is not UTF-8."""
    for index in range(table.num_rows):
        try:
            table.slice(index, 1).to_pylist()
        except UnicodeDecodeError:
            return index + 1
    return 1


def _first_undecodable_line(path: PathLike) -> int:
    """The 1-based number of the first line that is not UTF-8 (a UTF-8 character never holds a newline byte)."""
    with open(path, "rb") as handle:
        for number, raw_line in enumerate(handle, start=1):
            try:
                raw_line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def iter_csv_rows(path: PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (``"file:line"``, row) for each record of a CSV file with a header line (values are strings; the line
    is where the record starts). A record with more or fewer fields than the header raises RecordError."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames
            if not header:
                raise RecordError("expected a header line naming the columns", where=f"{path}:1")
            start = reader.line_num + 1
            for row in reader:
                where = f"{path}:{start}"
                if None in row or any(value is None for value in row.values()):
                    extra = row.pop(None, [])
                    got = sum(value is not None for value in row.values()) + len(extra)
                    raise RecordError(f"expected {len(header)} fields (as in the header), got {got}", where=where)
                yield where, dict(row)
                start = reader.line_num + 1
        except UnicodeDecodeError as error:
            where = f"{path}:{_first_undecodable_line(path)}"
            raise RecordError(f"expected UTF-8 text: {error.reason}", where=where) from None
        except csv.Error as error:
            raise RecordError(f"not readable as CSV: {error}", where=f"{path}:{reader.line_num}") from None


def records_to_dataset(records: Sequence[Any]) -> Any:
    """A ``datasets.Dataset`` holding the records (``meta`` as a JSON string), e.g. for ``save_to_disk``."""
    import datasets  # lazy: a heavy import, needed for hub datasets only

    if not records:
        raise RecordError("cannot build a dataset from no records")
    table_schema = arrow_schema(type(records[0]))
    rows = [_meta_to_column(_to_dict(record)) for record in records]
    return datasets.Dataset.from_list(rows, features=datasets.Features.from_arrow_schema(table_schema))


# ---------------------------------------------------------------- any source


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _load_hub_dataset(source: str, split: str, subset: str = "") -> Any:
    import datasets  # lazy: a heavy import, needed for hub datasets only

    try:
        return datasets.load_dataset(source, subset or None, split=split)
    except ConnectionError as error:
        named = f"{source}' (subset '{subset}')" if subset else f"{source}'"
        raise ConnectionError(
            f"could not reach the Hugging Face hub to load dataset '{named} ({error}). "
            f"Without network access, pass a local path instead: a .jsonl, .jsonl.gz, .parquet or .csv file, "
            f"or a folder written by datasets' save_to_disk."
        ) from error


def _load_datasets_rows(source: str, split: str, subset: str = "") -> Any:
    import datasets  # lazy: a heavy import, needed for hub datasets only

    folder = Path(source)
    if folder.is_dir() and _is_saved_dataset(folder):
        loaded = datasets.load_from_disk(str(folder))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise RecordError(f"no split '{split}'; available: {', '.join(loaded)}", where=source)
            loaded = loaded[split]
        return loaded
    if folder.is_dir():
        return datasets.load_dataset(str(folder), split=split)
    return _load_hub_dataset(source, split, subset)


def iter_rows(
    source: PathLike, split: str = "train", subset: str = "", errors: list[RecordError] | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, row dict) from a .jsonl/.jsonl.gz/.json/.parquet/.csv file, a saved dataset or a hub name
    (``subset``: the hub dataset's config name). ``errors``: JSON Lines only, collect bad lines instead of raising."""
    name = str(source)
    if name.endswith(JSONL_SUFFIXES):
        yield from iter_jsonl_rows(name, errors)
    elif name.endswith(PARQUET_SUFFIX):
        yield from iter_parquet_rows(name)
    elif name.endswith(CSV_SUFFIX):
        yield from iter_csv_rows(name)
    elif Path(name).is_file():
        raise RecordError(
            f"unsupported file type; expected {', '.join(JSONL_SUFFIXES)}, {PARQUET_SUFFIX} or {CSV_SUFFIX} "
            "(or a folder written by datasets' save_to_disk, or a hub dataset name)",
            where=name,
        )
    else:
        dataset = _load_datasets_rows(name, split, subset)
        shown = f"{name}/{subset}" if subset else name
        for number, row in enumerate(dataset, start=1):
            yield f"{shown} [{split}] row {number}", dict(row)


def read_records(source: PathLike, record_type: type[RecordT], split: str = "train", subset: str = "") -> list[RecordT]:
    """Read records from a file (by suffix), a ``save_to_disk`` folder or a Hugging Face hub dataset name."""
    return [record_from_row(record_type, row, where) for where, row in iter_rows(source, split, subset)]


def record_from_row(record_type: type[RecordT], row: dict[str, Any], where: str) -> RecordT:
    """A record from a row as any reader yields it (a Parquet/datasets ``meta`` JSON string decoded)."""
    return record_type.from_dict(_meta_from_column(row, where), where)  # type: ignore[attr-defined]
