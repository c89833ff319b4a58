"""Frames at 2 fps read from a real video (ffmpeg-made, 25 fps), by the rule of interleave.sample_frames."""
import subprocess

import numpy as np
import pytest

from training.frames import read_clip
from training.interleave import sample_frames


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "count.mp4"
    # every frame carries its number in base 16: red, green and blue hold its digits times 16
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=black:s=64x48:r=25:d=12",
                    "-vf", "geq=r='16*mod(N,16)':g='16*mod(floor(N/16),16)':b='16*floor(N/256)'", "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p",
                    "-g", "50", str(path)], check=True)
    return str(path)


@pytest.mark.parametrize("start,end", [(0.0, 12.0), (2.0, 7.0), (3.3, 9.9), (11.5, 12.0)])
def test_two_fps_frames_match_the_rule(video, start, end):
    frames, times = read_clip(video, start, end)
    every = [k / 25 for k in range(300)]
    index = sample_frames(every, start, end)
    assert times == pytest.approx([every[i] for i in index], abs=1e-6)
    assert len(frames) % 2 == 0 and len(frames) == len(index)
    numbers = [sum(int(round(f[..., c].mean() / 16)) * 16 ** c for c in range(3)) for f in frames]
    assert numbers == index      # the frames are the chosen ones, not only their times


def test_at_most_480_frames(tmp_path, video):
    frames, times = read_clip(video, 0.0, 12.0, max_frames=10)
    assert len(frames) == 10 and times[-1] == pytest.approx(4.52)   # the first frame at or after 4.5
    assert all(isinstance(f, np.ndarray) and f.shape == (48, 64, 3) for f in frames)


@pytest.fixture(scope="module")
def both_shards(tmp_path_factory, video):
    """Two clips of the numbered video sharded in each format, and the clips as LiveCC conversations."""
    from pipeline.stage import PartContext
    from stages.shard import Shard

    clips = [(0.3, 7.3), (3.3, 11.9)]
    rows = [{"id": "v", "clip_id": f"v_{i}", "video_id": "v", "start": s, "end": e, "previous": "", "title": "t",
             "category": None, "media_path": video,
             "words": [{"start": t, "end": t + 0.4, "word": f" w{k}"} for k, t in enumerate(np.arange(s, e - 0.3, 0.7))]}
            for i, (s, e) in enumerate(clips)]
    runs = {}
    for fmt in ("frames", "mp4"):
        runs[fmt] = tmp_path_factory.mktemp(fmt)
        out = Shard(Shard.Config(format=fmt)).process(rows, PartContext(run_dir=str(runs[fmt]), part=0))
        assert [r["status"] for r in out] == ["ok", "ok"], [r.get("reason") for r in out]
    conversations = [[{"role": "user", "content": [{"type": "video", "video": video, "video_start": r["start"],
                                                     "video_end": r["end"]}, {"type": "text", "text": ""}]},
                      {"role": "assistant", "content": [{"type": "text_stream", "text_stream":
                                                         [[w["start"], w["end"], w["word"]] for w in r["words"]]}]}]
                     for r in rows]
    return runs, conversations


def test_frame_shards_hold_the_chosen_frames_and_pack_like_the_source(both_shards):
    from tests.support.tokenizers import tiny_qwen_tokenizer
    from training.batches import clip_of, packing
    from training.loader import read_ref, shard_refs
    from training.packer import ChatPieces

    runs, conversations = both_shards
    load = packing(ChatPieces(tiny_qwen_tokenizer()))
    for ref, conversation in zip(shard_refs(str(runs["frames"] / "shards")), conversations):
        sample = read_ref(ref)
        frames, times, words, _ = clip_of(sample)
        start, end = (conversation[0]["content"][0][k] for k in ("video_start", "video_end"))
        index = sample_frames([k / 25 for k in range(300)], start, end)
        # upscaled to the packer's size and stored as JPEG, each frame still shows its own number
        numbers = [sum(int(round(f[..., c].mean() / 16)) * 16 ** c for c in range(3)) for f in frames]
        assert numbers == index and times == pytest.approx([k / 25 for k in index], abs=1e-6)
        from_shard, from_source = load(sample), load(conversation)
        assert from_shard.steps == from_source.steps
        assert (from_shard.input_ids == from_source.input_ids).all()
        assert (from_shard.labels == from_source.labels).all()
        assert np.abs(from_shard.pixel_values_videos - from_source.pixel_values_videos).mean() < 0.05


def test_mp4_shards_pack_every_word_in_the_source_timeline(both_shards):
    from tests.support.tokenizers import tiny_qwen_tokenizer
    from training.batches import clip_of, packing
    from training.loader import read_ref, shard_refs
    from training.packer import ChatPieces

    runs, conversations = both_shards
    load = packing(ChatPieces(tiny_qwen_tokenizer()))
    for ref, conversation in zip(shard_refs(str(runs["mp4"] / "shards")), conversations):
        sample = read_ref(ref)
        assert set(sample) == {"__key__", "json", "mp4"}
        frames, times, _, _ = clip_of(sample)
        start = conversation[0]["content"][0]["video_start"]
        assert times[0] == pytest.approx(start, abs=0.05) and len(frames) % 2 == 0   # the cut starts at 0 s
        stream = conversation[1]["content"][0]["text_stream"]
        packed = load(sample)
        assert [w for s in packed.steps for w in s.words] == [w.strip() for _, _, w in stream]
        assert abs(len(packed.steps) - len(load(conversation).steps)) <= 1
