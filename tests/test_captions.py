"""Caption parsing (VTT, SRT, YouTube rolling VTT, json3), cues -> words, and the caption_words stage."""
from __future__ import annotations

import json
import random
import re

import numpy as np
import pyarrow as pa
import pytest

from bench import loop_rules
from manifests.schemas import CAPTION_WORDS
from pipeline.stage import PartContext
from stages.caption_words import CaptionWords, Config
from stages.lib.captions import CaptionError, CaptionReport, Cue, CueReport, caption_format, clean_text, \
    decode_captions, load_captions, parse_captions, validate_cues
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


# --------------------------------------------------------------------------------------------------
# decoding, cleaning, cue validation, load_captions
# --------------------------------------------------------------------------------------------------


def test_decode_utf8_bom_utf16_and_cp1252():
    text = "Zürich – naïve “café” 日本"
    assert decode_captions(text.encode("utf-8")) == (text, 0)
    assert decode_captions(b"\xef\xbb\xbf" + text.encode("utf-8")) == (text, 0)
    for enc in ("utf-16", "utf-16-le", "utf-16-be", "utf-32"):
        data = text.encode(enc)
        if enc in ("utf-16-le", "utf-16-be"):
            data = "\ufeff".encode(enc) + data  # with its BOM
        assert decode_captions(data) == (text, 0), enc
    # a cp1252 file: not UTF-8, Western letters and typographic quotes between ASCII letters
    assert decode_captions(b"Caf\xe9 cr\xe8me br\xfbl\xe9e \x96 d\x92accord \x93oui\x94") == \
        ("Café crème brûlée – d’accord “oui”", 0)
    # pure ASCII plus one stray cp1252 apostrophe (a pasted line) is cp1252 too
    assert decode_captions(b"don\x92t stop") == ("don’t stop", 0)
    # a byte cp1252 leaves undefined is dropped and counted
    assert decode_captions(b"caf\xe9 \x81ok") == ("café ok", 1)


def test_decode_drops_and_counts_bad_bytes():
    # UTF-8 with a few broken bytes: the valid characters stay, each bad byte goes, none is U+FFFD
    data = "naïve café ".encode("utf-8") + b"caf\xc3 \xff\xfeok " + "Zürich".encode("utf-8")
    assert decode_captions(data) == ("naïve café caf ok Zürich", 3)
    # a legacy non-Latin file (cp1251 Russian): whole words of high bytes; not turned into Latin
    # mojibake but dropped and counted
    russian = "привет мир".encode("cp1251")
    text, bad = decode_captions(b"00:01.000 --> 00:02.000\n" + russian + b"\n")
    assert bad == 9 and text == "00:01.000 --> 00:02.000\n \n"
    # UTF-16 with a BOM and a truncated last character
    assert decode_captions("hé".encode("utf-16") + b"\x00") == ("hé", 1)
    # UTF-16 without a BOM, mostly-ASCII text
    assert decode_captions("WEBVTT\n\n00:01.000 --> 00:02.000\nhé\n".encode("utf-16-le"))[0].startswith("WEBVTT\n")


def test_clean_text_markup_entities_invisible():
    cases = {
        "&lt;i&gt;hello&lt;/i&gt; world": "hello world",
        "a &lt;script&gt;alert(1)&lt;/script&gt; b": "a b",
        "a <script>alert(1)</script> b": "a b",
        "a <SCRIPT type='x'>var x = '<b>';</SCRIPT> b <style>.c { color: red }</style>c": "a b c",
        "x &lt;script&gt;never closed": "x",
        "tail of a block</script> after": "after",
        "&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt;": "bold",
        "&amp;amp;lt;i&amp;amp;gt;deep": "deep",
        "&amp;amp;amp;amp;amp;lt;i&amp;amp;amp;amp;amp;gt;deeper": "deeper",
        "&#38;#38;#38;#38;#38;#38;lt;i&#38;#38;#38;#38;#38;#38;gt;deepest": "deepest",
        "AT&amp;T &amp;amp; R&D; 5 &lt; 6": "AT&T & R&D; 5 < 6",
        "Tom &amp; Jerry &quot;hi&quot; &#39;x&#39; &#x41;": "Tom & Jerry \"hi\" 'x' A",
        "zero\u200bwidth\u200d join\u00ad soft \ufeffbom \u202ertl\x00nul\x07bell \ufffdlost":
            "zerowidth join soft bom rtlnulbell lost",
        "tab\tand\x0bvt\u00a0nbsp\u2028ls": "tab and vt nbsp ls",
        "{\\an8}<c.colorE5E5E5>styled</c> &#8203;x": "styled x",
    }
    for raw, want in cases.items():
        got = clean_text(raw)
        assert got == want, (raw, got)
        assert not re.search(r"<[^>]*>|<[a-z/]|&(?:lt|gt|amp);", got, re.I), (raw, got)


def test_markup_never_comes_back_as_words_in_any_format():
    payload = "&lt;i&gt;one&lt;/i&gt; <script>alert(1)</script>two &amp;lt;b&amp;gt;three\u200b"
    vtt = f"WEBVTT\n\n00:01.000 --> 00:03.000\n{payload}\n"
    srt = f"1\n00:00:01,000 --> 00:00:03,000\n{payload}\n"
    rolling = ("WEBVTT\n\n00:00:01.000 --> 00:00:03.000\n \n"
               "&lt;i&gt;one<00:00:01.500><c> &lt;script&gt;alert(1)&lt;/script&gt;two</c>"
               "<00:00:02.000><c> &amp;lt;b&amp;gt;three\u200b</c>\n")
    json3 = json.dumps({"events": [{"tStartMs": 1000, "dDurationMs": 2000, "segs": [
        {"utf8": "&lt;i&gt;one"}, {"utf8": " <script>alert(1)</script>two", "tOffsetMs": 500},
        {"utf8": " &amp;lt;b&amp;gt;three\u200b", "tOffsetMs": 1000}]}]})
    for text, fmt in ((vtt, "vtt"), (srt, "srt"), (rolling, "vtt"), (json3, "json3")):
        cues, _ = load_captions(text.encode("utf-8"), fmt, "x")
        assert [c.text for c in cues] == ["one two three"], fmt
    rolling_cue = load_captions(rolling.encode("utf-8"), None, "x.vtt")[0][0]
    assert rolling_cue.word_times == (1.0, 1.5, 2.0)


def _srt_blocks(blocks) -> str:
    return "".join(f"{i}\n{_srt_ts(a)} --> {_srt_ts(b)}\n{txt}\n\n" for i, (a, b, txt) in enumerate(blocks, 1))


def test_out_of_order_srt_is_sorted():
    srt = _srt_blocks([(5000, 7000, "third cue"), (1000, 3000, "first cue"), (3000, 5000, "second cue")])
    raw = parse_captions(srt, "srt")
    assert [c.start for c in raw] == [5.0, 1.0, 3.0]  # the parser keeps file order
    cues, report = load_captions(srt.encode("utf-8"), "srt", "v.srt")
    assert cues == [Cue(1.0, 3.0, "first cue"), Cue(3.0, 5.0, "second cue"), Cue(5.0, 7.0, "third cue")]
    assert isinstance(report, CaptionReport)
    assert (report.cues_in, report.cues_out, report.out_of_order, report.bad_time) == (3, 3, 2, 0)
    assert (report.format, report.encoding, report.bad_bytes) == ("srt", "utf-8", 0)
    assert words_from_cue_lists([cues]).video(0) == [
        (1.0, 2.0, "first"), (2.0, 3.0, "cue"), (3.0, 4.0, "second"), (4.0, 5.0, "cue"),
        (5.0, 6.0, "third"), (6.0, 7.0, "cue")]


def test_bad_cue_times_dropped_and_counted():
    srt = _srt_blocks([(1000, 2000, "good one"), (4000, 3000, "reversed"), (5000, 5000, "zero length"),
                       (6000, 7000, "good two")])
    cues, report = load_captions(srt.encode("utf-8"), None, "captions")
    assert [c.text for c in cues] == ["good one", "good two"]
    assert (report.format, report.cues_in, report.bad_time, report.cues_out) == ("srt", 4, 2, 2)
    doc = {"events": [
        {"tStartMs": -500, "dDurationMs": 1000, "segs": [{"utf8": "negative"}]},
        {"tStartMs": 1000, "dDurationMs": float("nan"), "segs": [{"utf8": "nan"}]},
        {"tStartMs": float("inf"), "dDurationMs": 10, "segs": [{"utf8": "inf"}]},
        {"tStartMs": 2000, "dDurationMs": 1000, "segs": [{"utf8": "fine"}]},
        {"tStartMs": 3000, "dDurationMs": 1000, "segs": [{"utf8": "[Music]"}]},
    ]}
    cues, report = load_captions(json.dumps(doc).encode("utf-8"), "json3", "v.json3")
    assert cues == [Cue(2.0, 3.0, "fine")]
    assert (report.bad_time, report.no_text, report.cues_out) == (3, 1, 1)
    cues, report = validate_cues([Cue(0.0, 1.0, "   "), Cue(1.0, 1.0004, "too short"), Cue(2.0, 1.0, "back")])
    assert cues == [] and report == CueReport(cues_in=3, cues_out=0, bad_time=2, no_text=1)


def test_overlapping_cues_are_cut():
    srt = _srt_blocks([(1000, 4000, "one two three"), (3000, 5000, "four five")])
    cues, report = load_captions(srt.encode("utf-8"), "srt", "v.srt")
    assert cues == [Cue(1.0, 3.0, "one two three"), Cue(3.0, 5.0, "four five")]
    assert report.overlaps_cut == 1
    # 3 words over 1..3 s: 1 + 2/3 and 1 + 4/3 rounded to 0.1
    assert words_from_cue_lists([cues]).video(0) == [
        (1.0, 1.7, "one"), (1.7, 2.3, "two"), (2.3, 3.0, "three"), (3.0, 4.0, "four"), (4.0, 5.0, "five")]
    # a long cue over several later ones is cut at the first
    cues, report = validate_cues([Cue(0.0, 100.0, "title"), Cue(1.0, 2.0, "a"), Cue(2.0, 3.0, "b")])
    assert [(c.start, c.end) for c in cues] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)] and report.overlaps_cut == 1
    # a `[...]` cue gives no words: it is dropped first and does not cut the spoken cue under it
    cues, report = validate_cues([Cue(0.0, 10.0, "hello world"), Cue(2.0, 4.0, "[Music]")])
    assert cues == [Cue(0.0, 10.0, "hello world")] and (report.no_text, report.overlaps_cut) == (1, 0)


def test_overlapping_cues_with_inline_times():
    # times still inside the cut cue: kept; a time past the cut: all the cue's times dropped
    inside = [Cue(0.0, 4.0, "a b c", (0.0, 1.0, 2.0)), Cue(3.0, 5.0, "d e", (3.0, 4.5))]
    cues, report = validate_cues(inside)
    assert cues == [Cue(0.0, 3.0, "a b c", (0.0, 1.0, 2.0)), Cue(3.0, 5.0, "d e", (3.0, 4.5))]
    assert (report.overlaps_cut, report.times_dropped) == (1, 0)
    assert words_from_cue_lists([cues]).video(0) == [
        (0.0, 1.0, "a"), (1.0, 2.0, "b"), (2.0, 3.0, "c"), (3.0, 4.5, "d"), (4.5, 5.0, "e")]
    past = [Cue(0.0, 4.0, "a b c", (0.0, 1.0, 3.5)), Cue(3.0, 5.0, "d e", (3.0, 4.5))]
    cues, report = validate_cues(past)
    assert cues[0] == Cue(0.0, 3.0, "a b c") and (report.overlaps_cut, report.times_dropped) == (1, 1)
    assert words_from_cue_lists([cues]).video(0)[:3] == [(0.0, 1.0, "a"), (1.0, 2.0, "b"), (2.0, 3.0, "c")]
    # times going back, outside the cue, one short, non-finite: dropped, counted
    bad = [Cue(10.0, 12.0, "a b", (11.0, 10.5)), Cue(20.0, 22.0, "a b", (19.0, 21.0)),
           Cue(30.0, 32.0, "a b", (30.0,)), Cue(40.0, 42.0, "a b", (40.0, float("nan")))]
    cues, report = validate_cues(bad)
    assert all(c.word_times is None for c in cues) and report.times_dropped == 4


def test_same_start_cues_are_merged_in_file_order():
    cues, report = validate_cues([Cue(4.0, 5.0, "b"), Cue(1.0, 2.0, "x"), Cue(4.0, 6.0, "c"),
                                  Cue(8.0, 9.0, "hi"), Cue(8.0, 9.0, "hi")])
    assert cues == [Cue(1.0, 2.0, "x"), Cue(4.0, 6.0, "b c"), Cue(8.0, 9.0, "hi")]
    assert (report.merged, report.out_of_order, report.cues_out) == (2, 1, 3)
    # with inline times: concatenated when they stay non-decreasing, else dropped
    cues, report = validate_cues([Cue(0.0, 2.0, "a b", (0.0, 0.5)), Cue(0.0, 3.0, "c", (1.0,))])
    assert cues == [Cue(0.0, 3.0, "a b c", (0.0, 0.5, 1.0))] and report.times_dropped == 0
    cues, report = validate_cues([Cue(0.0, 2.0, "a b", (0.0, 1.5)), Cue(0.0, 3.0, "c d", (0.0, 1.0))])
    assert cues == [Cue(0.0, 3.0, "a b c d")] and report.times_dropped == 1


def test_cp1252_and_broken_utf8_files(tmp_path):
    srt = b"1\r\n00:00:01,000 --> 00:00:03,000\r\nCaf\xe9 cr\xe8me br\xfbl\xe9e d\x92accord\r\n"
    cues, report = load_captions(srt, None, "film.srt")
    assert [c.text for c in cues] == ["Café crème brûlée d’accord"]
    assert (report.encoding, report.bad_bytes) == ("cp1252", 0)
    vtt = ("WEBVTT\n\n00:01.000 --> 00:02.000\nnaïve ".encode("utf-8") + b"caf\xc3\n\n"
           + "00:02.000 --> 00:03.000\nZürich \xff ok\n".encode("utf-8").replace(b"\xc3\xbf", b"\xff"))
    cues, report = load_captions(vtt, "vtt", "v.vtt")
    assert [c.text for c in cues] == ["naïve caf", "Zürich ok"]
    assert (report.encoding, report.bad_bytes) == ("utf-8", 2)
    utf16 = "\ufeffWEBVTT\n\n00:01.000 --> 00:02.000\nnaïve café\n".encode("utf-16")
    cues, report = load_captions(utf16, None, "v.txt")
    assert cues == [Cue(1.0, 2.0, "naïve café")] and (report.format, report.encoding) == ("vtt", "utf-16")
    with pytest.raises(CaptionError):
        load_captions(b"\x00\x01 not captions at all", None, "x.txt")


def test_validation_keeps_well_formed_files_unchanged():
    for text, fmt in ((MANUAL_VTT, "vtt"), (AUTO_VTT, "vtt"), (SRT, "srt"), (json.dumps(AUTO_JSON3), "json3")):
        raw = parse_captions(text, fmt)
        cues, report = load_captions(text.encode("utf-8"), fmt, "x")
        assert (report.bad_time, report.out_of_order, report.merged, report.overlaps_cut) == (0, 0, 0, 0)
        assert cues == [c for c in raw if "[" not in c.text]
        for inline in (True, False):
            assert words_from_cue_lists([cues], inline).video(0) == words_from_cue_lists([raw], inline).video(0)


def _messy_cues(rng: random.Random) -> list[Cue]:
    """Cue lists as broken as files get: any order, overlaps, same starts, bad times, bad inline times,
    and times on the millisecond grid at 0.1 s rounding boundaries (0.15 is stored below 0.15)."""
    vocab = ["the", "a", "so", "so", "we", "we", "Hello.", "é", "[Music]"]
    cues = []
    for _ in range(rng.randint(0, 25)):
        s = rng.choice([rng.randint(0, 20000) / 1000, rng.uniform(-1, 20), rng.choice([0.15, 2.35, 4.05])])
        d = rng.choice([rng.randint(1, 5000) / 1000, rng.uniform(0, 3), 0.0, -1.0, 0.0001, float("nan")])
        text = rng.choice(["", " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 8)))])
        n = len([w for w in text.split(" ") if w])
        times = None
        if n and rng.random() < 0.5:
            e = s + (d if d == d else 1.0)
            times = sorted(rng.choice([s, e, rng.uniform(s - 0.5, e + 0.5), round(rng.uniform(s, e), 3)])
                           for _ in range(n + rng.choice([0, 0, 0, -1])))
            if rng.random() < 0.2:
                rng.shuffle(times)
            times = tuple(times)
        cues.append(Cue(s, s + d, text, times))
        if rng.random() < 0.2:  # another cue at the same start
            cues.append(Cue(s, s + rng.choice([0.3, 8.0]), rng.choice(vocab), None))
    if rng.random() < 0.5:
        rng.shuffle(cues)
    return cues


def test_validated_cues_never_give_words_going_back():
    rng = random.Random(2024)
    videos = [_messy_cues(rng) for _ in range(1500)]
    validated = []
    for cues in videos:
        out, report = validate_cues(cues)
        assert report.cues_in == len(cues) and report.cues_out == len(out)
        assert len(cues) == report.bad_time + report.no_text + report.merged + report.cues_out
        for a, b in zip(out, out[1:]):
            assert a.start < b.start and a.end <= b.start
        assert all(c.end > c.start >= 0 for c in out)
        validated.append(out)
    n_words = 0
    for inline in (True, False):
        words = words_from_cue_lists(validated, use_inline_times=inline)
        for v in range(words.n_videos):
            ws = words.video(v)
            n_words += len(ws)
            assert all(e >= s for s, e, _ in ws)
            for (s0, e0, _), (s1, e1, _) in zip(ws, ws[1:]):
                # non-decreasing starts and ends; and no word ends after the next one starts
                assert s0 <= s1 and e0 <= e1 and e0 <= s1, (v, inline)
    assert n_words > 10000  # the lists were not validated down to nothing
    # the raw lists do go back (the test can tell)
    raw = words_from_cue_lists(videos)
    assert any(s0 > s1 for v in range(raw.n_videos) for (s0, _, _), (s1, _, _) in zip(raw.video(v), raw.video(v)[1:]))
