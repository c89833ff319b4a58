"""Arrow schemas of the stage manifests. Every manifest starts with `id`, `status`, `reason`.

Times are seconds (float64). A word list is `list<struct<start, end, word>>`.
"""
from __future__ import annotations

import pyarrow as pa

WORD = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("word", pa.string())])
WORDS = pa.list_(WORD)

ROW = [("id", pa.string()), ("status", pa.string()), ("reason", pa.string())]

SOURCE = pa.schema([
    ("id", pa.string()),
    ("source_id", pa.string()),     # the row's own id as given (ids are cleaned: manifests/ids.py)
    ("source_row", pa.int64()),
    ("raw", pa.string()),           # the source row as JSON (or the raw line when it did not parse)
    ("parse_error", pa.string()),   # why the row is unusable, set by the source reader
])

VIDEO = [
    ("url", pa.string()),
    ("title", pa.string()),
    ("duration", pa.float64()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("language", pa.string()),
    ("categories", pa.list_(pa.string())),
    ("category", pa.string()),
    ("captions", pa.string()),      # a captions file the source row named (path or URL)
]

METADATA_FILTER = pa.schema(ROW + VIDEO + [("source_id", pa.string()), ("source_row", pa.int64()),
                                           ("metadata_from", pa.string())])

MEDIA = [
    ("media_path", pa.string()),
    ("media_bytes", pa.int64()),
    ("has_audio", pa.bool_()),
    ("captions_path", pa.string()),
    ("captions_kind", pa.string()),   # manual | automatic | provided
    ("captions_format", pa.string()),  # vtt | srt | json3
    ("info_path", pa.string()),
    ("attempts", pa.int64()),
    ("media_duration", pa.float64()),  # seconds of video that really decode (`duration`: what metadata claims)
]

DOWNLOAD = pa.schema(ROW + VIDEO + MEDIA)

CAPTION_WORDS = pa.schema(ROW + [
    ("title", pa.string()),
    ("category", pa.string()),
    ("duration", pa.float64()),
    ("media_path", pa.string()),
    ("captions_kind", pa.string()),
    ("words", WORDS),
    ("word_count", pa.int64()),
    ("distinct_words", pa.int64()),
    ("media_duration", pa.float64()),  # decodable seconds of the video (download)
    ("words_past_media", pa.int64()),  # words dropped: they end after the decodable media
    ("cues", pa.int64()),              # caption cues in the file
    ("cues_dropped", pa.int64()),      # negative, reversed, zero-length or non-finite cue times
    ("cues_unordered", pa.int64()),    # cues listed before an earlier-starting cue (sorted)
    ("bad_bytes", pa.int64()),         # undecodable bytes dropped from the captions text
])

# Own columns of transcript_language, a pass-through stage: its manifest is every column of the stage
# before it (caption_words, asr, prompt...) plus these. Not `language`: caption/asr manifests carry one.
TRANSCRIPT_LANGUAGE = [
    ("transcript_language", pa.string()),         # top label of the language-ID model, ISO code (en)
    ("transcript_language_score", pa.float64()),  # [0, 1]: the model's probability of that label
    ("language_backend", pa.string()),            # fasttext | xlmr
]

SEGMENT = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("text", pa.string())])

ASR = pa.schema(ROW + [
    ("title", pa.string()),
    ("category", pa.string()),
    ("duration", pa.float64()),
    ("media_path", pa.string()),
    ("words", WORDS),
    ("word_probs", pa.list_(pa.float64())),
    ("language", pa.string()),
    ("language_prob", pa.float64()),
    ("segments", pa.list_(SEGMENT)),
    ("audio_seconds", pa.float64()),
    ("words_past_media", pa.int64()),  # words dropped: they end after the decodable video (media_duration)
    ("words_unaligned", pa.int64()),   # align: pocketsphinx: words left with Whisper's or interpolated times
])

CLIP = [
    ("clip_id", pa.string()),
    ("video_id", pa.string()),
    ("start", pa.float64()),
    ("end", pa.float64()),
    ("words", WORDS),
    ("previous", pa.string()),
    ("title", pa.string()),
    ("category", pa.string()),
    ("media_path", pa.string()),
]

CLIP_SPLIT = pa.schema(ROW + CLIP + [("word_count", pa.int64()), ("span", pa.float64()), ("wps", pa.float64())])

LM_FILTER = pa.schema(list(CLIP_SPLIT) + [
    pa.field("lm_loss", pa.float64()),       # mean cross-entropy of the clip's words given the prompt
    pa.field("lm_tokens", pa.int64()),       # assistant tokens scored
])

TALKING_HEAD = pa.schema(list(CLIP_SPLIT) + [
    pa.field("talking_head", pa.float64()),  # [0, 1]: share of frames with a large face (face) | P("Yes") (vlm)
    pa.field("th_frames", pa.int64()),       # frames scored
    pa.field("th_backend", pa.string()),     # face | vlm
])

ACTIVE_SPEAKER = pa.schema(list(CLIP_SPLIT) + [
    pa.field("asd_ratio", pa.float64()),            # share of the windows' frames in which some face speaks
    pa.field("asd_windows", pa.int64()),            # 6 s windows scored (one every 30 s)
    pa.field("asd_frames", pa.int64()),             # frames in those windows (25 fps)
    pa.field("asd_tracks", pa.int64()),             # face tracks found
    pa.field("asd_speaking_tracks", pa.int64()),    # tracks with a speaking frame
    pa.field("asd_max_track_share", pa.float64()),  # the largest share of its frames one track speaks in
])

# prompt (a pass-through stage: these follow the input's columns; each task adds its own string columns)
PROMPT = pa.schema(ROW + [
    ("prompt_verdict", pa.string()),      # the decision field's value (YES / NO)
    ("prompt_model", pa.string()),        # the model that answered (as the endpoint names it)
    ("prompt_requests", pa.int64()),      # HTTP requests sent this run for the row (0: all from the cache)
    ("prompt_retries", pa.int64()),
    ("prompt_cached", pa.int64()),        # answers read from the reply cache
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("prompt_cost_usd", pa.float64()),
])

SHARD = pa.schema(ROW + [
    ("clip_id", pa.string()),
    ("video_id", pa.string()),
    ("start", pa.float64()),
    ("end", pa.float64()),
    ("shard", pa.string()),    # tar file name under RUN/shards/
    ("key", pa.string()),      # WebDataset sample key
    ("video_bytes", pa.int64()),
    ("video_duration", pa.float64()),
    ("frames", pa.int64()),    # frames format: the sample's frames (null for mp4)
])


def check_table(table: pa.Table, schema: pa.Schema) -> None:
    """Raise ValueError when a manifest does not carry the columns of its schema with their types."""
    missing = [f.name for f in schema if f.name not in table.schema.names]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}")
    wrong = [f"{f.name}: {table.schema.field(f.name).type} != {f.type}" for f in schema
             if not table.schema.field(f.name).type.equals(f.type)]
    if wrong:
        raise ValueError("manifest column types differ: " + "; ".join(wrong))
    bad = set(table.column("status").to_pylist()) - {"ok", "dropped", "error"}
    if bad:
        raise ValueError(f"manifest has unknown status values {sorted(bad)}")
