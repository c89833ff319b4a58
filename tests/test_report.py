"""The run report's pieces on hostile rows (markup in titles, words and reasons; media that is gone) and
its sampling; the whole report is checked in chromium against a real run in test_pretrain_run.py."""
import pyarrow as pa

from pipeline.report_gallery import Card, add_thumbnails, card_html, pick_cards
from pipeline.worker import reason_codes

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_cards_escape_markup_and_survive_missing_media(tmp_path):
    card = Card(stage="clip_split", status="dropped", reason=f"too_short: {EVIL}", code="too_short", clip_id="c<1>",
                title=EVIL,
                start=10.0, end=25.0, words=[{"start": 11.0, "end": 11.4, "word": EVIL},
                                              {"start": 22.5, "end": 23.0, "word": "later"}],
                scores={"span": 15.0}, media=str(tmp_path / "gone.mp4"))
    add_thumbnails([card])
    page = card_html(card)
    assert card.thumbs == [] and "no frames" in page
    assert "<script" not in page and "<img src=x" not in page and "&lt;script&gt;" in page
    assert page.count('class="trow"') == 2          # words at 11 s and 22.5 s: two 10 s rows of the clip
    assert 'data-reason="too_short"' in page and "span 15" in page
    card.words.append({"start": None, "end": None, "word": "untimed"})      # skipped, not a crash
    assert "untimed" not in card_html(card)


def test_pick_cards_takes_a_few_per_reason_spread_over_the_rows():
    rows = [{"id": f"r{i}", "clip_id": f"c{i}", "status": "dropped", "reason": f"too_short: {i}", "start": 0.0,
             "end": 1.0, "words": [], "span": float(i)} for i in range(10)]
    rows += [{"id": "k", "clip_id": "k", "status": "ok", "reason": None, "start": 0.0, "end": 1.0, "words": []},
             {"id": "q", "clip_id": "q", "status": "dropped", "reason": " ", "start": 0.0, "end": 1.0, "words": []}]
    codes = reason_codes(pa.Table.from_pylist(rows)).to_pylist()
    assert codes == ["too_short"] * 10 + ["", "unspecified"]
    cards = pick_cards("clip_split", [{**r, "reason_code": c} for r, c in zip(rows, codes)], ["span"],
                       per_reason=3, kept=6)
    short = [c for c in cards if c.status == "dropped" and c.code == "too_short"]
    assert [c.clip_id for c in short] == ["c0", "c3", "c6"] and [c.scores for c in short][1] == {"span": 3.0}
    assert [c.clip_id for c in cards if c.status == "ok"] == ["k"]
    # a drop that gives no reason gets its card under the code the summary counts it by
    assert [(c.clip_id, c.code) for c in cards if c.code == "unspecified"] == [("q", "unspecified")]
    assert 'data-reason="unspecified"' in card_html(next(c for c in cards if c.clip_id == "q"))
