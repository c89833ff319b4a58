"""The project's Qwen2-VL video patching against transformers' own Qwen2-VL image processor."""
import numpy as np
import pytest

from training import vision

transformers = pytest.importorskip("transformers")


def processor(low: int, high: int):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=low, max_pixels=high)


def test_smart_resize_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    rng = np.random.default_rng(0)
    for _ in range(500):
        h, w = int(rng.integers(20, 3000)), int(rng.integers(20, 3000))
        low, high = vision.frame_pixels(int(rng.integers(2, 481)))
        assert vision.smart_resize(h, w, 28, low, int(high)) == smart_resize(h, w, 28, low, int(high))


@pytest.mark.parametrize("shape,frames", [((360, 640), 8), ((480, 854), 2), ((97, 211), 6), ((720, 1280), 480)])
def test_video_patches_equal_the_processors_on_the_same_frames(shape, frames):
    """A frame pair of one image is what the image processor patches (it repeats an image in time), so
    videos of repeated pairs must give its pixel values, grid for grid."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(min(frames // 2, 3))]
    pairs = [images[k % len(images)] for k in range(frames // 2)]
    video = [image for image in pairs for _ in range(2)]
    ours = vision.video_inputs(video)
    low, high = vision.frame_pixels(frames)
    theirs = processor(low, int(high))(images=images, return_tensors="np")
    per_image = {id(image): k for k, image in enumerate(images)}
    patches_per_image = len(theirs["pixel_values"]) // len(images)
    expected = np.concatenate([theirs["pixel_values"][per_image[id(p)] * patches_per_image:
                                                      (per_image[id(p)] + 1) * patches_per_image] for p in pairs])
    t, h, w = ours["video_grid_thw"][0]
    assert t == frames // 2 and [1, h, w] == theirs["image_grid_thw"][0].tolist()
    assert ours["pixel_values_videos"].shape == expected.shape == (t * h * w, 3 * 2 * 14 * 14)
    np.testing.assert_allclose(ours["pixel_values_videos"], expected, atol=1e-5)
    assert h * w * 14 * 14 <= high   # the clip budget holds (smart_resize rounds down when over)


def test_two_different_frames_of_a_pair_keep_their_order():
    """Within a temporal patch, frame 0 comes before frame 1 (channel-major: C x 2 x 14 x 14)."""
    black, white = np.zeros((56, 56, 3), np.uint8), np.full((56, 56, 3), 255, np.uint8)
    patches = vision.video_inputs([black, white])["pixel_values_videos"].reshape(-1, 3, 2, 14 * 14)
    assert (patches[:, :, 0] < 0).all() and (patches[:, :, 1] > 0).all()


def test_odd_frame_counts_are_padded_and_tokens_counted():
    out = vision.video_inputs([np.zeros((280, 280, 3), np.uint8)] * 5)
    t, h, w = out["video_grid_thw"][0]
    assert t == 3 and vision.tokens_per_video((t, h, w)) == t * h * w // 4
