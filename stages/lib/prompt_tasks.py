"""Prompt tasks: a template, a reply schema and the manifest columns a reply fills, read from a file.

A task file (YAML, `profiles/tasks/<name>.yaml` or any path) holds:
  name, template      the user message; placeholders {asr} {timed_asr} {title} {category} {duration}
  reply_schema        JSON Schema of the reply object (sent to backends that constrain output)
  decision            optional {field, keep, drop}: the reply field that keeps or drops the row
  nonempty            reply fields that must hold text unless the decision dropped the row
  columns             reply field -> manifest column (strings)
  max_tokens          completion budget of one reply
Replies are parsed leniently (bare JSON, JSON in a code fence, or one object amid text) and checked
strictly (the schema, the decision values, the nonempty fields); anything else is a `BadReply`.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

TASKS_DIR = Path(__file__).resolve().parents[2] / "profiles" / "tasks"
PLACEHOLDERS = ("asr", "timed_asr", "title", "category", "duration")
TRANSCRIPT_PLACEHOLDERS = ("{asr}", "{timed_asr}")
PHRASE_GAP_S = 1.0       # {timed_asr}: a pause this long starts a new line
RAW_KEPT = 200           # characters of a bad reply kept in its reason


class BadReply(ValueError):
    """A reply that is not the task's JSON object; `raw` is the reply text."""

    code = "bad_reply"

    def __init__(self, problem: str, raw: str | None) -> None:
        start = " ".join((raw or "").split())[:RAW_KEPT]
        super().__init__(f"bad_reply: {problem}; reply starts: {start!r}")
        self.raw = raw


@dataclass(frozen=True)
class Task:
    name: str
    template: str
    reply_schema: Mapping[str, Any]
    columns: Mapping[str, str]
    decision: Mapping[str, str] | None = None
    nonempty: tuple[str, ...] = ()
    max_tokens: int = 256
    source: str = ""

    @property
    def digest(self) -> str:
        """Identity of what the task asks (the reply cache key includes it)."""
        return hashlib.sha256(json.dumps([self.template, self.reply_schema], sort_keys=True).encode()).hexdigest()[:16]

    def render(self, row: Mapping[str, Any]) -> str:
        values = {"asr": lambda: transcript(row.get("words")), "timed_asr": lambda: timed_transcript(row),
                  "title": lambda: str(row.get("title") or ""), "category": lambda: str(row.get("category") or ""),
                  "duration": lambda: f"{_span(row):.0f}"}
        return re.sub(r"\{(" + "|".join(PLACEHOLDERS) + r")\}", lambda m: values[m.group(1)](), self.template)

    def parse(self, text: str | None) -> tuple[bool | None, dict[str, str]]:
        """(keep: True/False, or None for a task without decision; {column: value}) or BadReply."""
        reply = extract_json(text)
        try:
            import jsonschema

            jsonschema.validate(reply, self.reply_schema)
        except jsonschema.ValidationError as exc:
            raise BadReply(f"does not match the reply schema ({exc.message[:120]})", text) from None
        keep = None
        if self.decision:
            value = reply.get(self.decision["field"])
            if value not in (self.decision["keep"], self.decision["drop"]):
                raise BadReply(f"{self.decision['field']} is {value!r}, not {self.decision['keep']!r} "
                               f"or {self.decision['drop']!r}", text)
            keep = value == self.decision["keep"]
        if keep is not False:
            empty = [f for f in self.nonempty if not isinstance(reply.get(f), str) or not reply[f].strip()]
            if empty:
                raise BadReply(f"{', '.join(empty)} empty", text)
        columns = {column: reply.get(field) for field, column in self.columns.items()}
        return keep, {c: v.strip() if isinstance(v, str) else v for c, v in columns.items()}


def load_task(name_or_path: str) -> Task:
    """A task by name (profiles/tasks/NAME.yaml) or by path; ValueError says what is wrong."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = TASKS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TASKS_DIR.glob("*.yaml")))
        raise ValueError(f"prompt task {name_or_path!r}: no file {path} (known tasks: {known}, or a path to a YAML file)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"prompt task {path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"prompt task {path}: expected a mapping with name, template, reply_schema, columns")
    known = {"name", "template", "reply_schema", "decision", "nonempty", "columns", "max_tokens"}
    if set(raw) - known:
        raise ValueError(f"prompt task {path}: unknown keys {sorted(set(raw) - known)}; valid: {sorted(known)}")
    task = Task(name=str(raw.get("name") or path.stem), template=raw.get("template") or "",
                reply_schema=raw.get("reply_schema") or {}, columns=raw.get("columns") or {},
                decision=raw.get("decision"), nonempty=tuple(raw.get("nonempty") or ()),
                max_tokens=int(raw.get("max_tokens") or 256), source=str(path))
    _check(task, path)
    return task


def _check(task: Task, path: Path) -> None:
    where = f"prompt task {path}"
    if not isinstance(task.template, str) or not any(p in task.template for p in TRANSCRIPT_PLACEHOLDERS):
        raise ValueError(f"{where}: the template must contain {{asr}} or {{timed_asr}}")
    if task.reply_schema.get("type") != "object" or not isinstance(task.reply_schema.get("properties"), dict):
        raise ValueError(f"{where}: reply_schema must be a JSON Schema of type object with properties")
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(task.reply_schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"{where}: reply_schema is not a valid JSON Schema ({exc.message[:120]})") from None
    fields = set(task.reply_schema["properties"])
    if not isinstance(task.columns, dict) or not task.columns:
        raise ValueError(f"{where}: columns must map reply fields to manifest columns, e.g. {{query: query}}")
    for field, column in task.columns.items():
        if field not in fields or not re.fullmatch(r"[a-z][a-z0-9_]*", str(column)):
            raise ValueError(f"{where}: columns: {field!r} must be a reply_schema property and {column!r} "
                             f"a lower-case column name")
    if task.decision is not None:
        if not isinstance(task.decision, dict) or set(task.decision) != {"field", "keep", "drop"} \
                or task.decision["field"] not in fields:
            raise ValueError(f"{where}: decision must be {{field: <reply field>, keep: <value>, drop: <value>}}")
    if set(task.nonempty) - fields:
        raise ValueError(f"{where}: nonempty names fields not in reply_schema: {sorted(set(task.nonempty) - fields)}")
    if task.max_tokens < 1:
        raise ValueError(f"{where}: max_tokens must be >= 1")


def extract_json(text: str | None) -> dict:
    """The reply's JSON object: bare, in a ``` fence, or the outermost {...} amid other text."""
    if text is None or not text.strip():
        raise BadReply("empty reply", text)
    candidates = [text.strip()]
    fence = re.search(r"```(?:json|JSON)?\s*\n?(.*?)```", text, re.S)
    if fence:
        candidates.insert(0, fence.group(1).strip())
    first, last = text.find("{"), text.rfind("}")
    if 0 <= first < last:
        candidates.append(text[first:last + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise BadReply("no JSON object", text)


def transcript(words: Sequence[Mapping[str, Any]] | None) -> str:
    return " ".join(w["word"].strip() for w in words or () if w.get("word") and w["word"].strip())


def timed_transcript(row: Mapping[str, Any]) -> str:
    """One `[a-b] words` line per phrase (a pause of PHRASE_GAP_S starts one), times from the clip start."""
    words = [w for w in row.get("words") or () if w.get("word") and w["word"].strip()]
    if not words:
        return ""
    origin = row.get("start") if row.get("start") is not None else words[0]["start"]
    lines, phrase = [], [words[0]]
    for word in words[1:]:
        if word["start"] - phrase[-1]["end"] >= PHRASE_GAP_S:
            lines.append(phrase)
            phrase = []
        phrase.append(word)
    lines.append(phrase)
    return "\n".join(f"[{p[0]['start'] - origin:.1f}-{p[-1]['end'] - origin:.1f}] " + transcript(p) for p in lines)


def _span(row: Mapping[str, Any]) -> float:
    start, end = row.get("start"), row.get("end")
    return float(end - start) if isinstance(start, (int, float)) and isinstance(end, (int, float)) else 0.0
