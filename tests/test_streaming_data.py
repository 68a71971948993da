"""bridge.data.streaming: the ImageNet evaluation transform and data sets read sample by sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bridge.data.datasets import load_labelled
from bridge.data.streaming import (IMAGENET_MEAN, IMAGENET_STD, ImageTransform, NpzArrays, open_dataset,
                                   parse_transform)
from bridge.format.errors import BridgeError


def test_imagenet_transform_resizes_the_short_side_crops_the_centre_and_normalises():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)  # H=300, W=400
    image = Image.fromarray(pixels)
    x = ImageTransform.imagenet()(image)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    # by hand: short side 300 -> 256, long 400 -> int(256 * 400 / 300) = 341; crop offsets
    # round((256 - 224) / 2) = 16 and round((341 - 224) / 2) = round(58.5) = 58 (banker's)
    resized = np.asarray(image.resize((341, 256), Image.BILINEAR), dtype=np.float32) / 255
    crop = resized[16:240, 58:282].transpose(2, 0, 1)
    want = (crop - np.array(IMAGENET_MEAN, np.float32)[:, None, None]) / np.array(IMAGENET_STD, np.float32)[:, None, None]
    np.testing.assert_allclose(x.numpy(), want, rtol=1e-6, atol=1e-6)
    # a portrait image: the width is the short side
    assert ImageTransform(resize=32, crop=None)(Image.fromarray(pixels[:, :200])).shape == (3, 48, 32)


def test_parse_transform():
    assert parse_transform(None) is None and parse_transform("fit") is None
    assert parse_transform("imagenet") == ImageTransform.imagenet()
    t = parse_transform("imagenet,resize=288,crop=256")
    assert (t.resize, t.crop, t.mean) == (288, 256, IMAGENET_MEAN)
    assert parse_transform("mean=0.5,std=0.25") == ImageTransform(None, None, (0.5,), (0.25,))
    assert parse_transform("imagenet,mean=none,std=none").mean is None
    for bad in ("imagenet,zoom=2", "crop=big", "std=0", "resize=0"):
        with pytest.raises(BridgeError):
            parse_transform(bad)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_rows_equal_the_arrays(tmp_path, compressed):
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(13, 2, 4, 4)).astype(np.float64)
    y = rng.integers(0, 5, 13).astype(np.int32)
    (np.savez_compressed if compressed else np.savez)(tmp_path / "d.npz", x=x, y=y)
    ds = open_dataset(str(tmp_path / "d.npz"), input_shape=(2, 4, 4))
    assert isinstance(ds, NpzArrays) and ds.in_memory == compressed and len(ds) == 13
    for i in (0, 7, 12):
        xi, yi = ds[i]
        assert xi.dtype == torch.float32 and yi == int(y[i])
        assert torch.equal(xi, torch.from_numpy(x[i].astype(np.float32)))
    # the same samples as the in-memory loader, also when they must be fitted to another size
    ds8 = open_dataset(str(tmp_path / "d.npz"), input_shape=(2, 8, 8))
    xs, ys = load_labelled(str(tmp_path / "d.npz"), input_shape=(2, 8, 8))
    assert torch.allclose(torch.stack([ds8[i][0] for i in range(13)]), xs) and ys.tolist() == y.tolist()


def test_bad_npz_files_say_what_to_fix(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 3)))
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 3)), y=np.zeros(3, np.int64))
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 3)), y=np.zeros(2))
    (tmp_path / "d.npz").write_bytes(b"not a zip")
    for name, words in (("a", "named x"), ("b", "one label per sample"), ("c", "integer labels"),
                        ("d", "numpy.savez"), ("missing", "no such file")):
        with pytest.raises(BridgeError, match=words):
            open_dataset(str(tmp_path / f"{name}.npz"), input_shape=(3,))


# --- errors inside DataLoader worker processes ------------------------------------------------

def _image_folder_with_a_corrupt_file(root):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).save(root / c / f"{i}.png")
    bad = root / "dog" / "9_corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature, then nothing readable
    return bad


class _FailsAt(torch.utils.data.Dataset):
    """Samples 0.. of zeros; sample ``bad`` raises a plain ValueError (not a BridgeError)."""

    def __init__(self, n, bad):
        self.n, self.bad = n, bad

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.bad:
            raise ValueError(f"sample {i} is broken\nsecond line")
        return torch.zeros(1, 8, 8), 0


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_read_in_a_worker_is_reported_as_its_own_one_line(tmp_path, capsys, workers):
    from tests import zoo
    from tests.cli_helpers import assert_one_line_error, run

    bad = _image_folder_with_a_corrupt_file(tmp_path / "imgs")
    nir_path = zoo.write_mlp_nir(tmp_path / "mlp.nir")  # a 1-channel 8x8 model
    code, _, err = run(capsys, "evaluate", nir_path, "--data", f"imagefolder:{tmp_path / 'imgs'}",
                       "--workers", workers, "--batch-size", 2, "--timesteps-list", 2)
    line = assert_one_line_error(code, err, f"cannot read image {bad}")
    assert "Caught" not in line and "worker" not in line and "File " not in line, line


def test_worker_errors_through_the_library_keep_their_message_and_class(tmp_path):
    from bridge.data.streaming import worker_batches
    from tests import zoo
    from validation.evaluation import evaluate_dataset

    from bridge.converter import convert

    bad = _image_folder_with_a_corrupt_file(tmp_path / "imgs")
    model, shape = zoo.mlp()
    graph = convert(model, shape)
    data = open_dataset(f"imagefolder:{tmp_path / 'imgs'}", input_shape=shape)
    with pytest.raises(BridgeError) as info:
        evaluate_dataset(graph, data, [2], batch_size=2, workers=2)
    message = str(info.value)
    assert message.startswith(f"cannot read image {bad}: ") and "\n" not in message, message
    assert type(info.value) is BridgeError
    # an error that is not a BridgeError (a bug or an OS error in a custom data set): one line
    # naming its type and message, not torch's "Caught ValueError in DataLoader worker process"
    loader = torch.utils.data.DataLoader(_FailsAt(6, bad=3), batch_size=2, num_workers=2)
    with pytest.raises(BridgeError) as info:
        list(worker_batches(loader))
    assert str(info.value).startswith("reading the data failed (ValueError: sample 3 is broken second line)")
    # errors that do not come from a worker pass unchanged
    with pytest.raises(ValueError, match="^sample 3 is broken"):
        list(worker_batches(torch.utils.data.DataLoader(_FailsAt(6, bad=3), batch_size=2, num_workers=0)))


def test_imagenet_transform_on_a_grey_model_is_refused_before_reading_with_a_one_channel_example(tmp_path, capsys):
    from tests import zoo
    from tests.cli_helpers import assert_one_line_error, run

    _image_folder_with_a_corrupt_file(tmp_path / "imgs")
    nir_path = zoo.write_mlp_nir(tmp_path / "mlp.nir")
    code, _, err = run(capsys, "evaluate", nir_path, "--data", f"imagefolder:{tmp_path / 'imgs'}",
                       "--workers", 2, "--transform", "imagenet", "--timesteps-list", 2)
    line = assert_one_line_error(code, err, "3 channels (RGB)", "1-channel",
                                 "--transform imagenet,mean=0.449,std=0.226")
    assert "Caught" not in line
    # the example given is a transform that passes the check
    suggested = line.split("--transform ")[-1].split()[0]
    parse_transform(suggested).check_channels(1)
    assert parse_transform(suggested).crop == 224
    with pytest.raises(BridgeError, match="give one value per channel"):
        parse_transform("mean=0.5/0.5,std=0.2/0.2").check_channels(3)
    parse_transform("mean=0.5,std=0.2").check_channels(3)  # one value for all channels
