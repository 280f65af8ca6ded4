"""RGB-D and ground-truth segmentation from MuJoCo cameras, with per-frame K and camera-to-world pose.

Images come out top-row-first with OpenCV camera poses (docs/conventions.md). With segmentation, a camera costs
two render passes: a segmentation pass whose depth buffer also gives metric depth, and a colour pass. Without it
(acting needs no segmentation: closed-loop evaluation), colour and depth come from the one colour pass.
Reflections, shadows, the skybox and multisampling are turned off, which was measured ~2.5x faster.
"""

from __future__ import annotations

import importlib.util

import mujoco
import numpy as np

ROBOT_LABEL = 255
_GL_TO_CV = np.diag([1.0, -1.0, -1.0])


def intrinsics(fovy_deg: float, height: int, width: int) -> np.ndarray:
    """Pinhole K of a MuJoCo camera (square pixels, principal point at the image centre)."""
    f = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2)
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]], dtype=np.float64)


def fast_visuals(model: mujoco.MjModel) -> None:
    """Rendering settings that must be applied to a model before its renderer is created."""
    model.vis.quality.offsamples = 0
    model.vis.quality.shadowsize = 0


class Cameras:
    """Renders named or free cameras of one MuJoCo model at a fixed resolution.

    `labels` maps each geom id to a segmentation label (0 background, 1..N objects, 255 robot).
    """

    def __init__(self, model: mujoco.MjModel, height: int, width: int, geom_labels: np.ndarray):
        _import_triton_before_gl()
        fast_visuals(model)
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        self.model = model
        self.height, self.width = height, width
        self.renderer = mujoco.Renderer(model, height, width)
        flags = self.renderer.scene.flags
        for flag in (mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SHADOW,
                     mujoco.mjtRndFlag.mjRND_SKYBOX):
            flags[flag] = False
        self.option = mujoco.MjvOption()
        self.option.sitegroup[:] = 0  # robosuite's sites (gripper axis, object markers) are not scenery
        self.geom_labels = np.asarray(geom_labels, dtype=np.uint8)
        extent = model.stat.extent
        self._near, self._far = model.vis.map.znear * extent, model.vis.map.zfar * extent
        self._seg_buf = np.empty((height, width, 3), np.uint8)
        self._depth_buf = np.empty((height, width), np.float32)

    def close(self) -> None:
        self.renderer.close()

    def render(self, data: mujoco.MjData, camera: str | mujoco.MjvCamera,
               segmentation: bool = True) -> dict[str, np.ndarray]:
        """rgb (H,W,3) uint8, depth (H,W) float32 metres (0 invalid), seg (H,W) uint8 (with `segmentation`),
        K (3,3), pose (4,4)."""
        r = self.renderer
        r.update_scene(data, camera=camera, scene_option=self.option)
        scene, ctx, rect = r.scene, r._mjr_context, r._rect
        if r._gl_context:
            r._gl_context.make_current()
        out = {}
        if segmentation:
            flags = scene.flags.copy()
            scene.flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = True
            scene.flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = True
            mujoco.mjr_render(rect, scene, ctx)
            mujoco.mjr_readPixels(self._seg_buf, self._depth_buf, rect, ctx)
            np.copyto(scene.flags, flags)
            out["seg"] = np.flipud(self._segmentation(scene)).copy()
            out["depth"] = np.flipud(self._metric_depth()).copy()
        rgb = np.empty((self.height, self.width, 3), np.uint8)
        mujoco.mjr_render(rect, scene, ctx)
        mujoco.mjr_readPixels(rgb, None if segmentation else self._depth_buf, rect, ctx)
        if not segmentation:
            out["depth"] = np.flipud(self._metric_depth()).copy()
        K, pose = self.geometry(data, camera)
        return {"rgb": np.flipud(rgb).copy(), **out, "K": K, "pose": pose}

    def _segmentation(self, scene: mujoco.MjvScene) -> np.ndarray:
        ids = self._seg_buf.astype(np.int64)
        segid = ids[..., 0] + (ids[..., 1] << 8) + (ids[..., 2] << 16)
        lut = np.zeros(scene.ngeom + 2, np.uint8)
        for g in scene.geoms[: scene.ngeom]:
            if g.segid >= 0 and g.objtype == mujoco.mjtObj.mjOBJ_GEOM:
                lut[g.segid + 1] = self.geom_labels[g.objid]
        return lut[np.minimum(segid, len(lut) - 1)]

    def _metric_depth(self) -> np.ndarray:
        # Reverse-Z OpenGL depth to metres, as mujoco.Renderer does it.
        zfar, znear = np.float64(self._far), np.float64(self._near)
        c = -0.5 * (-(zfar + znear) / (zfar - znear)) - 0.5
        d = -0.5 * (-(2 * zfar * znear) / (zfar - znear))
        depth = d / (self._depth_buf.astype(np.float64) + c)
        depth[depth >= 0.99 * zfar] = 0.0
        return depth.astype(np.float32)

    def geometry(self, data: mujoco.MjData, camera) -> tuple[np.ndarray, np.ndarray]:
        """K (3,3) and the camera-to-world pose (4,4) of a named camera, or of a free camera after a render."""
        pose = np.eye(4)
        if isinstance(camera, str):
            cid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            pose[:3, :3] = data.cam_xmat[cid].reshape(3, 3) @ _GL_TO_CV
            pose[:3, 3] = data.cam_xpos[cid]
            fovy = self.model.cam_fovy[cid]
        else:
            # A free camera's pose comes from the scene's two stereo eyes (offset ±ipd/2): their mean.
            eyes = self.renderer.scene.camera
            forward, up = np.array(eyes[0].forward), np.array(eyes[0].up)
            pose[:3, :3] = np.stack([np.cross(forward, up), -up, forward], axis=1)
            pose[:3, 3] = (np.array(eyes[0].pos) + np.array(eyes[1].pos)) / 2
            fovy = self.model.vis.global_.fovy
        return intrinsics(fovy, self.height, self.width), pose


def _import_triton_before_gl() -> None:
    """Import triton (where installed) before the first GL context: importing it afterwards, as torchvision does,
    segfaults the process (its LLVM clashes with the one Mesa's EGL renderer has loaded); before, both work."""
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


def free_camera(lookat, distance: float, azimuth: float, elevation: float) -> mujoco.MjvCamera:
    """A free camera looking at `lookat` from `distance` m; azimuth/elevation in degrees."""
    cam = mujoco.MjvCamera()
    cam.type = mujoco.mjtCamera.mjCAMERA_FREE
    cam.lookat[:] = lookat
    cam.distance, cam.azimuth, cam.elevation = distance, azimuth, elevation
    return cam
