import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The test machine's 2 cores are shared; torch's thread pool stalls 10-50x under contention, so use one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_lift(tmp_path_factory):
    """Two lift demonstrations at 64 px and an untrained DON (resnet18, 4-d descriptors) saved as a run folder,
    shared by the encoder and filter tests: `(demos file, DON run folder)`. Tests write into their own folders."""
    import torch

    from dckp.don.checkpoint import save_checkpoint
    from dckp.don.config import DonConfig
    from dckp.don.model import DenseObjectNet
    from dckp.sim.collect import collect_demos
    from dckp.sim.config import CollectConfig

    tmp = tmp_path_factory.mktemp("tiny_lift")
    demos = tmp / "lift.h5"
    collect_demos(CollectConfig(task="lift", demos=2, image_size=64), str(demos), progress=False)
    cfg = DonConfig(backbone="resnet18", descriptor_dim=4, image_size=64)
    torch.manual_seed(0)
    save_checkpoint(tmp / "don" / "don.safetensors", DenseObjectNet(cfg), cfg, 0)
    return demos, tmp / "don"


FAKE_ENCODER = "test_zeros"


@pytest.fixture(autouse=True)
def registry_unchanged():
    """No test leaves the encoder registry changed (once it has been loaded)."""
    import sys

    base = sys.modules.get("dckp.encoders.base")
    before = base.registry() if base is not None else None  # the built-in encoders loaded
    yield
    if before is not None:
        assert base._REGISTRY.classes == before, "a test left the encoder registry changed"


@pytest.fixture
def fake_encoder():
    """A test-local encoder, registered for one test and removed afterwards: 3 zeros per camera, and one keypoint
    per camera at the image centre (confidence 0.9); `calls` counts its forward passes."""
    import torch

    from dckp.encoders.base import Encoder, unregister

    class Zeros(Encoder):
        name = FAKE_ENCODER
        inputs = ("rgb",)
        keypoints = True

        def __init__(self, cameras, image_size, options=None, **artefacts):
            super().__init__(cameras, image_size, options)
            self.calls = 0

        def output_dim(self):
            return 3 * len(self.cameras)

        def forward(self, frames):
            self.calls += 1
            return torch.zeros(len(frames[f"{self.cameras[0]}_rgb"]), self.output_dim())

        def image_keypoints(self, frames):
            out = {}
            for cam in self.cameras:
                B, H, W = frames[f"{cam}_rgb"].shape[:3]
                out[cam] = (torch.tensor([[(W - 1) / 2, (H - 1) / 2]]).expand(B, 1, 2), torch.full((B, 1), 0.9))
            return out

    try:
        yield Zeros
    finally:
        unregister(FAKE_ENCODER)
