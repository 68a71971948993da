"""MNIST-1D (Greydanus 2020, "Scaling down deep learning"): 1D signals of 10 digit classes.

``mnist1d.data.make_dataset(get_dataset_args())`` builds the standard set offline from the
package's own templates (nothing is downloaded): 4000 training and 1000 test signals of
length 40, normalised to zero mean and unit standard deviation. Here they are shaped
``(N, 1, 40)`` (one channel, for ``Conv1d``) as float32, labels int64.

Published baselines: logistic regression ~32%, MLP ~68%, CNN ~94%; conversion to IF neurons
at T <= 4 loses several points on it, so it tells conversion methods apart where the digits
(ANNs at 99.5%+) do not.
"""

from __future__ import annotations

import functools
import random

import numpy as np
import torch

from bridge.data.datasets import Split
from bridge.format.errors import BridgeError

SIGNAL_LENGTH = 40
INPUT_SHAPE = (1, SIGNAL_LENGTH)


@functools.lru_cache(maxsize=2)
def _arrays(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise BridgeError("MNIST-1D needs the mnist1d package; install it with `pip install mnist1d`") from None
    args = get_dataset_args()
    args.seed = seed
    # make_dataset reseeds numpy's and random's global generators: leave the caller's intact
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return d["x"], d["y"], d["x_test"], d["y_test"]


def mnist1d_split(seed: int = 42) -> Split:
    """The MNIST-1D train/test split made with generator seed ``seed`` (42: the published set).

    ``train_x`` ``(4000, 1, 40)``, ``test_x`` ``(1000, 1, 40)``, float32; labels int64.
    Built once per process and seed (~1-4 s), then cached.
    """
    x, y, xt, yt = _arrays(int(seed))

    def signals(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).unsqueeze(1)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    return Split(signals(x), labels(y), signals(xt), labels(yt))
