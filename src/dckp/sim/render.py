"""RGB-D and ground-truth segmentation from MuJoCo cameras, with per-frame K and camera-to-world pose.

Images come out top-row-first with OpenCV camera poses (docs/conventions.md). With segmentation, a camera costs
two render passes: a segmentation pass whose depth buffer also gives metric depth, and a colour pass. Without it
(acting needs no segmentation: closed-loop evaluation), colour and depth come from the one colour pass.
The cameras draw what a real camera would see, as robosuite's cameras do by default: the visual geoms (robosuite
puts them in MuJoCo geom group 1), not the collision geoms (group 0: the Panda's collision meshes would show as green
and blue shapes, the objects' as red boxes). Reflections, shadows, the skybox and multisampling are turned off,
which was measured ~2.5x faster, and geoms wholly outside a camera's view are left out of its scene (the same
pixels, ~40 % less time on two cameras).
"""

from __future__ import annotations

import importlib.util

import mujoco
import numpy as np

ROBOT_LABEL = 255
HIDDEN_GROUP = 5  # a geom group that is not drawn
COLLISION_GROUP = 0  # robosuite's collision geoms: not drawn (robosuite's cameras' default; dckp.sim.config.RENDER)
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
        self.option.geomgroup[COLLISION_GROUP] = 0  # the visual geoms only, as robosuite's cameras
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
        self._update_scene(data, camera)
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

    def _update_scene(self, data: mujoco.MjData, camera: str | mujoco.MjvCamera) -> None:
        """The renderer's scene for `camera`, without the geoms that lie wholly outside its view frustum.

        At these sizes a render's cost is per triangle, and most of the arm's 180k mesh triangles lie outside the
        wrist camera's view and much of them outside the overview's. A geom outside the frustum draws no pixel,
        so the images are the same to the bit (tests/test_sim.py)."""
        if isinstance(camera, str):
            cam = mujoco.MjvCamera()
            cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
            cam.fixedcamid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            if cam.fixedcamid < 0:
                raise ValueError(f'The camera "{camera}" does not exist.')
        else:
            cam = camera
        scene = self.renderer.scene
        mujoco.mjv_updateCamera(self.model, data, cam, scene)
        groups = self.model.geom_group
        outside = np.flatnonzero(self._outside_frustum(scene.camera, data))
        saved = groups[outside]
        groups[outside] = HIDDEN_GROUP
        try:
            mujoco.mjv_updateScene(self.model, data, self.option, None, cam, mujoco.mjtCatBit.mjCAT_ALL, scene)
        finally:
            groups[outside] = saved

    def _outside_frustum(self, eyes, data: mujoco.MjData) -> np.ndarray:
        """Per geom: its bounding box lies wholly outside the view frustum of the (mono) camera `eyes`."""
        eye = eyes[0]
        if eye.orthographic:  # the side planes below are a perspective camera's
            return np.zeros(self.model.ngeom, bool)
        pos = (np.array(eyes[0].pos) + np.array(eyes[1].pos)) / 2  # a mono render uses the eyes' mean
        forward, up = np.array(eye.forward), np.array(eye.up)
        near, far = eye.frustum_near, eye.frustum_far
        half = eye.frustum_width or 0.5 * (eye.frustum_top - eye.frustum_bottom) * self.width / self.height
        right_edge, left_edge = eye.frustum_center + half, eye.frustum_center - half
        # Outward plane normals in camera coordinates (x right, y up, z forward) and their offsets: near, far,
        # then the four sides through the eye and an edge of the near rectangle.
        normals = np.array([[0, 0, -1], [0, 0, 1], [near, 0, -right_edge], [-near, 0, left_edge],
                            [0, near, -eye.frustum_top], [0, -near, eye.frustum_bottom]], np.float64)
        offsets = np.array([near, -far, 0, 0, 0, 0])
        lengths = np.linalg.norm(normals, axis=1)
        normals = normals / lengths[:, None] @ np.stack([np.cross(forward, up), up, forward])  # to world
        offsets = offsets / lengths - normals @ pos
        box = self.model.geom_aabb  # (centre, half sizes) in each geom's frame
        rot = data.geom_xmat.reshape(-1, 3, 3)
        centres = data.geom_xpos + np.einsum("gij,gj->gi", rot, box[:, :3])
        reach = np.abs(np.einsum("gji,pj->gpi", rot, normals)) @ box[:, 3:, None]  # (G, planes, 1)
        gap = centres @ normals.T + offsets - reach[..., 0]
        margin = 1e-4 + 0.01 * np.abs(box[:, 3:]).max(1, keepdims=True)  # cull only what is surely outside
        return (gap > margin).any(1) & (self.model.geom_rbound > 0)  # rbound 0: a plane, unbounded

    def geom_ids(self, scene: mujoco.MjvScene) -> np.ndarray:
        """The geom id of every pixel (bottom row first, -1 where no geom) in the last segmentation pass."""
        ids = self._seg_buf.astype(np.int64)
        segid = ids[..., 0] + (ids[..., 1] << 8) + (ids[..., 2] << 16)
        lut = np.full(scene.ngeom + 2, -1, np.int64)
        for g in scene.geoms[: scene.ngeom]:
            if g.segid >= 0 and g.objtype == mujoco.mjtObj.mjOBJ_GEOM:
                lut[g.segid + 1] = g.objid
        return lut[np.minimum(segid, len(lut) - 1)]

    def _segmentation(self, scene: mujoco.MjvScene) -> np.ndarray:
        ids = self.geom_ids(scene)
        return np.where(ids >= 0, self.geom_labels[ids], 0).astype(np.uint8)

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
