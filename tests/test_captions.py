"""Caption parsing (VTT, SRT, YouTube rolling VTT, json3), cues -> words, and the caption_words stage."""
from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest

from bench import loop_rules
from manifests.schemas import CAPTION_WORDS
from pipeline.stage import PartContext
from stages.caption_words import CaptionWords, Config
from stages.lib.captions import CaptionError, Cue, caption_format, parse_captions
from stages.lib.words import CueArrays, WordArrays, cues_to_words, distinct_word_counts, round1, \
    words_from_cue_lists

# --------------------------------------------------------------------------------------------------
# WebVTT
# --------------------------------------------------------------------------------------------------

MANUAL_VTT = """\ufeffWEBVTT - a title
Kind: captions
Language: en

STYLE
::cue { color: yellow }

NOTE this block is a comment
that spans two lines

intro-1
00:00:01.000 --> 00:00:04.500 align:start position:10% line:90%
<v Roger>Hello <i>there</i>,</v>
<b>Tom &amp; Jerry</b>&nbsp;&lt;3

00:04.500 --> 00:07.250
<c.colorE5E5E5>a minute</c> without hours

NOTE trailing note

2
01:02:03.004 --> 01:02:05.000
  spaced    out  
"""


def test_vtt_manual_blocks_tags_entities_and_times():
    cues = parse_captions(MANUAL_VTT, "vtt")
    assert cues == [
        Cue(1.0, 4.5, "Hello there, Tom & Jerry <3"),
        Cue(4.5, 7.25, "a minute without hours"),
        Cue(3723.004, 3725.0, "spaced out"),
    ]
    assert all(c.word_times is None for c in cues)


def test_vtt_crlf_and_empty_and_garbage():
    crlf = MANUAL_VTT.replace("\n", "\r\n")
    assert parse_captions(crlf, "vtt") == parse_captions(MANUAL_VTT, "vtt")
    assert parse_captions("WEBVTT\n\n", "vtt") == []
    with pytest.raises(CaptionError):
        parse_captions("this is not a caption file\nat all\n", "vtt")


# YouTube's rolling automatic captions: each tagged line once, repeated as the plain top row of
# the next cue and in a 10 ms transition cue; `[Music]` and one-word lines come without tags.
AUTO_VTT = """WEBVTT
Kind: captions
Language: en

00:00:00.160 --> 00:00:02.350 align:start position:0%
 
hello<00:00:00.480><c> everyone</c><00:00:00.960><c> welcome</c><00:00:01.439><c> to</c>

00:00:02.350 --> 00:00:02.360 align:start position:0%
hello everyone welcome to
 

00:00:02.360 --> 00:00:05.030 align:start position:0%
hello everyone welcome to
my<00:00:02.879><c> channel</c><00:00:03.360><c> today</c><00:00:03.840><c> we</c><00:00:04.000><c> we</c>

00:00:05.030 --> 00:00:05.040 align:start position:0%
my channel today we we
 

00:00:05.040 --> 00:00:07.000 align:start position:0%
my channel today we we
[Music]

00:00:07.000 --> 00:00:07.010 align:start position:0%
[Music]
 

00:00:07.010 --> 00:00:09.500 align:start position:0%
[Music]
okay

00:00:09.500 --> 00:00:09.510 align:start position:0%
okay
 

00:00:09.510 --> 00:00:12.000 align:start position:0%
okay
so<00:00:10.100><c> let's</c><00:00:10.700><c> go</c>
"""


def test_rolling_auto_vtt_every_word_once_with_inline_times():
    cues = parse_captions(AUTO_VTT, "vtt")
    assert [c.text for c in cues] == ["hello everyone welcome to", "my channel today we we", "[Music]",
                                      "okay", "so let's go"]
    assert cues[0] == Cue(0.16, 2.35, "hello everyone welcome to", (0.16, 0.48, 0.96, 1.439))
    assert cues[1].word_times == (2.36, 2.879, 3.36, 3.84, 4.0)
    assert (cues[1].start, cues[1].end) == (2.36, 5.03)
    assert cues[3] == Cue(7.01, 9.5, "okay", (7.01,))
    assert cues[4] == Cue(9.51, 12.0, "so let's go", (9.51, 10.1, 10.7))


def test_rolling_auto_vtt_to_words():
    cues = parse_captions(AUTO_VTT, "vtt")
    words = loop_rules.cue_words(cues, use_inline_times=True)
    # every spoken word once, in order; `[Music]` gone; the stuttered "we" dropped (its time goes to
    # the word before it); a word ends where the next begins, the last one at the cue end
    assert words == [
        (0.2, 0.5, "hello"), (0.5, 1.0, "everyone"), (1.0, 1.4, "welcome"), (1.4, 2.4, "to"),
        (2.4, 2.9, "my"), (2.9, 3.4, "channel"), (3.4, 3.8, "today"), (3.8, 5.0, "we"),
        (7.0, 9.5, "okay"), (9.5, 10.1, "so"), (10.1, 10.7, "let's"), (10.7, 12.0, "go"),
    ]
    spread = loop_rules.cue_words(cues, use_inline_times=False)
    # the same words spread evenly over each cue (4 words left of "my channel today we we")
    assert [w[2] for w in spread] == [w[2] for w in words]
    assert spread[4:8] == [(2.4, 3.0, "my"), (3.0, 3.7, "channel"), (3.7, 4.4, "today"), (4.4, 5.0, "we")]
    vec = words_from_cue_lists([cues], use_inline_times=True)
    assert vec.video(0) == words


def test_rolling_srt_without_tags_is_deduplicated():
    # yt-dlp's SRT conversion of automatic captions: no inline times, every line shown again
    blocks = []
    lines = ["one two three", "four five", "six seven eight", "nine ten"]
    t = 0
    prev = None
    for k, line in enumerate(lines):
        text = line if prev is None else f"{prev}\n{line}"
        blocks.append((t, t + 1990, text))
        blocks.append((t + 1990, t + 2000, line))
        prev = line
        t += 2000
    srt = "\n".join(f"{i}\n{_srt_ts(a)} --> {_srt_ts(b)}\n{txt}\n" for i, (a, b, txt) in enumerate(blocks, 1))
    cues = parse_captions(srt, "srt")
    assert [c.text for c in cues] == lines
    assert [(c.start, c.end) for c in cues] == [(0.0, 1.99), (2.0, 3.99), (4.0, 5.99), (6.0, 7.99)]


def _srt_ts(ms: int) -> str:
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def test_manual_vtt_repeating_a_line_is_not_deduplicated():
    vtt = ("WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nNo.\n\n00:00:02.000 --> 00:00:03.000\nNo.\n\n"
           "00:00:03.000 --> 00:00:04.000\nYes.\n")
    assert [c.text for c in parse_captions(vtt, "vtt")] == ["No.", "No.", "Yes."]


# --------------------------------------------------------------------------------------------------
# SRT
# --------------------------------------------------------------------------------------------------

SRT = ("\ufeff1\r\n00:00:00,500 --> 00:00:03,000\r\n<i>First</i> line\r\nsecond <font color=\"red\">line</font>\r\n"
       "\r\n2\r\n00:00:03,000 --> 00:00:05,250\r\n{\\an8}Top text\r\n\r\n"
       "3\r\n01:00:00,000 --> 01:00:01,001\r\nlast")


def test_srt_bom_comma_ms_tags_multiline():
    assert parse_captions(SRT, "srt") == [
        Cue(0.5, 3.0, "First line second line"),
        Cue(3.0, 5.25, "Top text"),
        Cue(3600.0, 3601.001, "last"),
    ]
    with pytest.raises(CaptionError):
        parse_captions("nothing here", "srt")


# --------------------------------------------------------------------------------------------------
# json3
# --------------------------------------------------------------------------------------------------

AUTO_JSON3 = {
    "wireMagic": "pb3",
    "pens": [{}],
    "events": [
        {"tStartMs": 0, "dDurationMs": 12000, "id": 1, "wpWinPosId": 1, "wsWinStyleId": 1},
        {"tStartMs": 160, "dDurationMs": 5000, "wWinId": 1, "segs": [
            {"utf8": "hello", "acAsrConf": 0}, {"utf8": " everyone", "tOffsetMs": 320, "acAsrConf": 0},
            {"utf8": " welcome", "tOffsetMs": 800}, {"utf8": " welcome", "tOffsetMs": 1100}]},
        {"tStartMs": 2350, "dDurationMs": 2690, "wWinId": 1, "aAppend": 1, "segs": [{"utf8": "\n"}]},
        {"tStartMs": 2360, "dDurationMs": 4640, "wWinId": 1, "segs": [
            {"utf8": "[Music]"}]},
        {"tStartMs": 5040, "dDurationMs": 10, "wWinId": 1, "aAppend": 1, "segs": [{"utf8": "\n"}]},
        {"tStartMs": 5040, "dDurationMs": 6000, "wWinId": 1, "segs": [
            {"utf8": "my"}, {"utf8": " chan", "tOffsetMs": 500}, {"utf8": "nel", "tOffsetMs": 700},
            {"utf8": " today", "tOffsetMs": 1000}]},
    ],
}


def test_json3_auto_segments_offsets_and_append_events():
    cues = parse_captions(json.dumps(AUTO_JSON3), "json3")
    assert cues == [
        # shown until the next line starts: end cut from 5.16 to 2.36
        Cue(0.16, 2.36, "hello everyone welcome welcome", (0.16, 0.48, 0.96, 1.26)),
        Cue(2.36, 5.04, "[Music]", (2.36,)),
        # a seg without a leading space continues the word ("chan" + "nel")
        Cue(5.04, 11.04, "my channel today", (5.04, 5.54, 6.04)),
    ]
    words = loop_rules.cue_words(cues)
    assert words == [(0.2, 0.5, "hello"), (0.5, 1.0, "everyone"), (1.0, 2.4, "welcome"),
                     (5.0, 5.5, "my"), (5.5, 6.0, "channel"), (6.0, 11.0, "today")]
    assert words_from_cue_lists([cues]).video(0) == words


def test_json3_manual_whole_lines():
    doc = {"events": [
        {"tStartMs": 1000, "dDurationMs": 2000, "segs": [{"utf8": "Hello,\nworld"}]},
        {"tStartMs": 3000, "dDurationMs": 1500, "segs": [{"utf8": "This is "}, {"utf8": "impor"},
                                                         {"utf8": "tant."}]},
        {"tStartMs": 9000},
    ]}
    assert parse_captions(json.dumps(doc), "json3") == [
        Cue(1.0, 3.0, "Hello, world"), Cue(3.0, 4.5, "This is important.")]
    with pytest.raises(CaptionError):
        parse_captions("{not json", "json3")
    with pytest.raises(CaptionError):
        parse_captions("[1, 2]", "json3")


def test_caption_format_by_extension_and_content():
    assert caption_format("a/b/video.en.vtt") == "vtt"
    assert caption_format("video.en.SRT") == "srt"
    assert caption_format("video.en.json3") == "json3"
    assert caption_format("video.json", json.dumps(AUTO_JSON3)) == "json3"
    assert caption_format("captions.txt", "WEBVTT\n\n") == "vtt"
    assert caption_format("captions", SRT) == "srt"
    assert caption_format("captions", "00:01.000 --> 00:02.000\nhi\n") == "vtt"
    with pytest.raises(CaptionError):
        caption_format("captions.txt", "hello")
    with pytest.raises(CaptionError):
        caption_format("captions.txt")
    with pytest.raises(CaptionError):
        parse_captions("WEBVTT", "ass")


# --------------------------------------------------------------------------------------------------
# cues -> words (LIVECC_SPEC section 2)
# --------------------------------------------------------------------------------------------------


def test_words_rules_by_hand():
    cues = [
        Cue(0.0, 3.0, "so so so what is this"),      # 6 tokens, 4 words left: d/n = 0.75
        Cue(3.0, 5.0, "[Music]"),
        Cue(5.0, 6.0, "la ] la"),                    # a bracket anywhere drops the cue
        Cue(6.0, 6.5, "end end"),                    # one word after the duplicate drop
        Cue(7.0, 8.0, "yes  yes"),                   # empty token between: still neighbours
        Cue(10.05, 10.15, "a b"),                    # 10.1 (stored 10.0999...) rounds like Python
    ]
    expected = [(0.0, 0.8, "so"), (0.8, 1.5, "what"), (1.5, 2.2, "is"), (2.2, 3.0, "this"),
                (6.0, 6.5, "end"), (7.0, 8.0, "yes"),
                (round(10.05, 1), round(10.05 + 0.1 / 2, 1), "a"), (round(10.05 + 0.1 / 2, 1), round(10.15, 1), "b")]
    assert loop_rules.cue_words(cues) == expected
    assert words_from_cue_lists([cues]).video(0) == expected


def test_words_i_over_n_counts_after_duplicate_drop():
    # the reference builds the de-duplicated list first: 2 words over 2 s, not 3 tokens
    assert loop_rules.cue_words([Cue(0.0, 2.0, "go go home")]) == [(0.0, 1.0, "go"), (1.0, 2.0, "home")]
    assert words_from_cue_lists([[Cue(0.0, 2.0, "go go home")]]).video(0) == [(0.0, 1.0, "go"), (1.0, 2.0, "home")]


def test_inline_times_mismatch_falls_back_to_even_spread():
    cue = Cue(0.0, 3.0, "one two three", (0.0, 2.0))  # 2 times for 3 words
    assert loop_rules.cue_words([cue]) == [(0.0, 1.0, "one"), (1.0, 2.0, "two"), (2.0, 3.0, "three")]
    assert words_from_cue_lists([[cue]]).video(0) == loop_rules.cue_words([cue])


def test_round1_is_python_round_bit_for_bit():
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.integers(0, 10**7, 20000) / 1000.0, rng.integers(0, 10**5, 20000) / 20.0,
                             rng.uniform(0, 1e4, 20000),
                             [0.05, 0.15, 0.25, 0.35, 1.05, 2.675, 1234.55, 0.0, 5e-7]])
    values = np.concatenate([values, -values])
    got = round1(values)
    assert got.tolist() == [round(v, 1) for v in values.tolist()]
    # and the naive numpy rounding would not be (the test can tell the difference)
    assert (np.round(values, 1) != np.array([round(v, 1) for v in values.tolist()])).any()


VOCAB = ["the", "a", "so", "so", "Hello.", "OK!", "x", "[Music]", "[", "]", "é", "Ünïcode", "-", "well,"]


def _random_cues(rng: random.Random) -> list[Cue]:
    cues, t = [], rng.uniform(0, 5)
    for _ in range(rng.randint(0, 25)):
        toks = [rng.choice(VOCAB) for _ in range(rng.randint(1, 9))]
        if rng.random() < 0.1:
            toks.insert(rng.randrange(len(toks) + 1), "")  # double / leading / trailing space
        text = " ".join(toks)
        d = rng.choice([rng.uniform(0.05, 6), 0.0, -0.5])
        n_words = len([w for w in text.split(" ") if w])
        times = None
        if rng.random() < 0.4 and n_words:
            times = tuple(sorted(round(t + rng.uniform(0, max(d, 0.0)), 3) for _ in range(n_words)))
            if rng.random() < 0.15:
                times = times[:-1]
        cues.append(Cue(round(t, 3), round(t + d, 3), text, times))
        t += max(d, 0) + rng.choice([0.0, 0.2, 3.0, 7.5])
    return cues


@pytest.mark.parametrize("inline", [True, False])
def test_vectorised_words_equal_loop_oracle(inline):
    rng = random.Random(1234 + inline)
    for _ in range(60):
        videos = [_random_cues(rng) for _ in range(rng.randint(1, 30))]
        got = words_from_cue_lists(videos, use_inline_times=inline)
        assert got.n_videos == len(videos)
        for v, cues in enumerate(videos):
            assert got.video(v) == loop_rules.cue_words(cues, use_inline_times=inline)


def test_cue_arrays_and_empty_inputs():
    assert words_from_cue_lists([]).n_videos == 0
    w = words_from_cue_lists([[], [Cue(0, 1, "[Music]")], []])
    assert w.n_videos == 3 and w.counts().tolist() == [0, 0, 0]
    ca = CueArrays.from_cue_lists([[Cue(0, 1, "a b", (0.0, 0.5))], [Cue(2, 3, "c")]])
    assert ca.offsets.tolist() == [0, 1, 2] and ca.time_offsets.tolist() == [0, 2, 2]
    assert cues_to_words(ca).video(1) == [(2.0, 3.0, "c")]


def test_distinct_word_counts_case_and_punctuation():
    words = WordArrays.from_lists([
        [(0, 1, "Hello,"), (1, 2, "hello"), (2, 3, "HELLO!"), (3, 4, "don't"), (4, 5, "dont"), (5, 6, "--"),
         (6, 7, "Café."), (7, 8, "café")],
        [],
        [(0, 1, "a"), (1, 2, "a")],
    ])
    assert distinct_word_counts(words).tolist() == [4, 0, 1]


# --------------------------------------------------------------------------------------------------
# the caption_words stage
# --------------------------------------------------------------------------------------------------


def _row(name: str, path, fmt=None) -> dict:
    return {"id": name, "status": "ok", "reason": None, "title": f"t {name}", "category": "Education",
            "duration": 60.0, "media_path": f"/m/{name}.mp4", "captions_path": None if path is None else str(path),
            "captions_kind": "manual", "captions_format": fmt, "url": "u", "width": 640}


def _sentence_vtt(n_words: int, distinct: int) -> str:
    words = [f"w{k % distinct}" for k in range(n_words)]
    blocks = [f"{k // 60:02d}:{k % 60:02d}.000 --> {(k + 1) // 60:02d}:{(k + 1) % 60:02d}.000\n"
              f"{' '.join(words[k * 2:(k + 1) * 2])}\n" for k in range(n_words // 2)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def test_caption_words_stage(tmp_path):
    (tmp_path / "good.en.vtt").write_text(_sentence_vtt(80, 40))
    (tmp_path / "few.en.vtt").write_text(_sentence_vtt(80, 10))
    (tmp_path / "music.en.vtt").write_text("WEBVTT\n\n00:00.000 --> 00:05.000\n[Music]\n")
    (tmp_path / "bad.en.json3").write_text("{broken")
    (tmp_path / "auto.txt").write_text(AUTO_VTT)
    rows = [_row("good", tmp_path / "good.en.vtt", "vtt"), _row("missing", tmp_path / "nope.vtt", "vtt"),
            _row("few", tmp_path / "few.en.vtt"), _row("music", tmp_path / "music.en.vtt"),
            _row("bad", tmp_path / "bad.en.json3", "json3"), _row("nopath", None),
            _row("auto", tmp_path / "auto.txt")]
    stage = CaptionWords(Config(min_distinct_words=5))
    out = stage.process(rows, PartContext(str(tmp_path), 0))
    by = {r["id"]: r for r in out}
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    assert by["good"]["status"] == "ok" and by["good"]["word_count"] == 80
    assert by["good"]["distinct_words"] == 40
    assert by["good"]["words"][:2] == [{"start": 0.0, "end": 0.5, "word": "w0"}, {"start": 0.5, "end": 1.0, "word": "w1"}]
    assert by["few"]["status"] == "ok"  # 10 distinct >= 5
    assert by["music"]["status"] == "dropped" and by["music"]["reason"] == "no_words"
    assert by["missing"]["status"] == "error" and by["missing"]["reason"].startswith("FileNotFoundError")
    assert by["nopath"]["status"] == "error"
    assert by["bad"]["status"] == "error" and by["bad"]["reason"].startswith("CaptionError: not json3")
    assert by["auto"]["status"] == "ok" and [w["word"] for w in by["auto"]["words"]] == \
        ["hello", "everyone", "welcome", "to", "my", "channel", "today", "we", "okay", "so", "let's", "go"]
    assert by["auto"]["words"][0] == {"start": 0.2, "end": 0.5, "word": "hello"}
    for r in out:
        r.pop("_traceback", None)
    table = pa.Table.from_pylist(out, schema=CAPTION_WORDS)
    assert table.num_rows == len(rows)

    strict = CaptionWords(Config()).process([rows[2]], PartContext(str(tmp_path), 0))[0]
    assert strict["status"] == "dropped" and strict["reason"].startswith("too_few_words")
    assert strict["distinct_words"] == 10
    spread = CaptionWords(Config(use_inline_times=False, min_distinct_words=0)).process(
        [rows[-1]], PartContext(str(tmp_path), 0))[0]
    assert spread["words"][0] == {"start": 0.2, "end": 0.7, "word": "hello"}


def test_caption_words_reads_run_relative_paths(tmp_path):
    # download writes paths relative to the run folder: media/<id>.<lang>.<ext>
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "v.en.srt").write_text(SRT)
    row = _row("v", "media/v.en.srt", "srt")
    out = CaptionWords(Config(min_distinct_words=0)).process([row], PartContext(str(tmp_path), 0))[0]
    assert out["status"] == "ok" and [w["word"] for w in out["words"]][:2] == ["First", "line"]
    other = CaptionWords(Config(min_distinct_words=0)).process([row], PartContext(str(tmp_path / "x"), 0))[0]
    assert other["status"] == "error" and "media/v.en.srt" in other["reason"]


def test_caption_words_config_from_yaml_values():
    from pipeline.config import ConfigError, build_dataclass

    cfg = build_dataclass(Config, {"use_inline_times": False, "min_distinct_words": 12}, "caption_words")
    assert cfg == Config(use_inline_times=False, min_distinct_words=12)
    with pytest.raises(ConfigError):
        build_dataclass(Config, {"min_distinct_words": -1}, "caption_words")
