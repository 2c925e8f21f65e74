"""Camera paths for the Control-Camera models: preset moves, pose files, and the Plücker ray channels.

A `CameraPath` is what the camera nodes pass along (ComfyUI type EASYANIMATE_CAMERA). It stays a description until
the sampler asks for a frame count, so presets always cover exactly the frames being generated. Pose rows follow the
CameraCtrl / RealEstate10K layout `fx fy cx cy` (fractions of the frame) + a 3×4 world-to-camera matrix.
The formulas and their order are in docs/camera.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

BASE_ANGLE = math.pi / 3  # radians of rotation for a preset at speed 1 over the whole clip
BASE_TRANSLATION = 1.5  # world units of travel for a preset at speed 1 over the whole clip
POSE_REFERENCE_SIZE = (1280, 720)  # (width, height) the released poses' intrinsics refer to
DEFAULT_INTRINSICS = (0.474812461, 0.844111024, 0.5, 0.5)  # fx fy cx cy, as the official trajectory node
POSE_FILE_FPS = 24  # CameraCtrl / RealEstate10K pose files are sampled at 24 fps
PLUCKER_CHANNELS = 6

# preset -> (rotation axis weights (x, y, z), translation direction (x, y, z)); the official camera presets
PRESETS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "Static": ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    "Pan Up": ((0.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "Pan Down": ((0.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "Pan Left": ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0)),
    "Pan Right": ((0.0, 0.0, 0.0), (-1.0, 0.0, 0.0)),
    "Zoom In": ((0.0, 0.0, 0.0), (0.0, 0.0, -2.0)),
    "Zoom Out": ((0.0, 0.0, 0.0), (0.0, 0.0, 2.0)),
    "ACW": ((0.0, 0.0, 1.0), (0.0, 0.0, 0.0)),
    "CW": ((0.0, 0.0, -1.0), (0.0, 0.0, 0.0)),
}


# -- describing a path ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    """A preset-style move: rotation angles and translation growing linearly with frame index i/n."""

    angle: tuple[float, float, float]
    translation: tuple[float, float, float]
    speed: float = 1.0


@dataclass(frozen=True)
class PoseRows:
    """Explicit per-frame poses (from a pose file): intrinsics [N, 4] and world-to-camera [N, 3, 4], float64."""

    intrinsics: torch.Tensor
    world_to_camera: torch.Tensor

    def __len__(self) -> int:
        return self.world_to_camera.shape[0]


@dataclass(frozen=True)
class CameraPath:
    """Segments played one after another; `intrinsics` (fx fy cx cy) override every frame's when set."""

    segments: tuple[Move | PoseRows, ...]
    intrinsics: tuple[float, float, float, float] | None = None

    def then(self, other: CameraPath) -> CameraPath:
        return CameraPath(self.segments + other.segments, self.intrinsics or other.intrinsics)

    def with_intrinsics(self, fx: float, fy: float, cx: float, cy: float) -> CameraPath:
        return replace(self, intrinsics=(fx, fy, cx, cy))

    def pose_rows(self, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(intrinsics [N, 4], world_to_camera [N, 3, 4]) float64. Preset moves share the frames left by pose-file
        segments (earlier moves take the remainder), so a path of moves has exactly `frames` rows; pose files keep
        their own length."""
        fixed = sum(len(s) for s in self.segments if isinstance(s, PoseRows))
        moves = sum(1 for s in self.segments if isinstance(s, Move))
        free = max(frames - fixed, moves)
        counts = [free // moves + (1 if k < free % moves else 0) for k in range(moves)] if moves else []
        intrinsics, poses = [], []
        for segment in self.segments:
            if isinstance(segment, Move):
                rows = move_poses(segment, counts.pop(0))
                rows_k = torch.tensor(self.intrinsics or DEFAULT_INTRINSICS, dtype=torch.float64).expand(len(rows), 4)
            else:
                rows, rows_k = segment.world_to_camera, segment.intrinsics
            poses.append(rows if not poses else chain_after(poses[-1][-1], rows))
            intrinsics.append(rows_k)
        intrinsics = torch.cat(intrinsics)
        if self.intrinsics is not None:
            intrinsics = torch.tensor(self.intrinsics, dtype=torch.float64).expand(len(intrinsics), 4)
        return intrinsics.clone(), torch.cat(poses)


def preset(names: list[str] | str, speed: float = 1.0) -> CameraPath:
    """One preset, or several summed into one move (the official 'combine': angles and translations add)."""
    names = [names] if isinstance(names, str) else names
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise ValueError(f"unknown camera preset {unknown}; choose from {list(PRESETS)}")
    angle = tuple(sum(PRESETS[n][0][k] for n in names) for k in range(3))
    translation = tuple(sum(PRESETS[n][1][k] for n in names) for k in range(3))
    return CameraPath((Move(angle, translation, speed),))


def rotation_zyx(angles: torch.Tensor) -> torch.Tensor:
    """Angles (x, y, z) in radians → R = Rz · Ry · Rx, float64 [3, 3]."""
    cx, cy, cz = torch.cos(angles)
    sx, sy, sz = torch.sin(angles)
    one, zero = torch.ones((), dtype=angles.dtype), torch.zeros((), dtype=angles.dtype)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx]).view(3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy]).view(3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one]).view(3, 3)
    return rz @ (ry @ rx)


def move_poses(move: Move, frames: int) -> torch.Tensor:
    """World-to-camera [frames, 3, 4] of a move: frame i rotates by (i/n)·speed·π/3·angle and translates by
    (i/n)·speed·1.5·T, n = frames (so the last frame stops one step short of the full move)."""
    angle = torch.tensor(move.angle, dtype=torch.float64)
    translation = torch.tensor(move.translation, dtype=torch.float64)
    rows = []
    for i in range(frames):
        progress = (i / frames) * move.speed
        rotation = rotation_zyx(progress * BASE_ANGLE * angle)
        rows.append(torch.cat([rotation, (progress * BASE_TRANSLATION * translation).view(3, 1)], dim=1))
    return torch.stack(rows)


def chain_after(last: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
    """The official 'join': continue `poses` [N, 3, 4] from pose `last` [3, 4] (R' = R·R_last,
    T' = T + R'·R_lastᵀ·T_last, in that order)."""
    rotation_last, translation_last = last[:, :3], last[:, 3:]
    rotation = poses[:, :, :3] @ rotation_last
    translation = poses[:, :, 3:] + (rotation @ rotation_last.T) @ translation_last
    return torch.cat([rotation, translation], dim=2)


# -- pose files -------------------------------------------------------------------------------------------------------


def read_pose_file(path: Path | str, fps: int = 8) -> CameraPath:
    """A CameraCtrl / RealEstate10K pose file: first line a URL, then `t fx fy cx cy 0 0 w2c[12]` per frame.
    24 fps files are subsampled by every (24 // fps)-th line for an `fps` video, as the original prediction script."""
    path = Path(path)
    lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    bad = [n + 2 for n, fields in enumerate(lines) if len(fields) != 19]
    if not lines or bad:
        raise ValueError(
            f"{path.name} is not a CameraCtrl pose file: expected a first line (URL) and then lines of 19 numbers "
            f"(time fx fy cx cy 0 0 and 12 world-to-camera values){'; bad line(s) ' + str(bad[:5]) if bad else ''}"
        )
    try:
        values = torch.tensor([[float(x) for x in fields] for fields in lines], dtype=torch.float64)
    except ValueError as error:
        raise ValueError(f"{path.name}: a pose line holds something that is not a number ({error})") from None
    values = values[:: max(1, POSE_FILE_FPS // fps)]
    return CameraPath((PoseRows(values[:, 1:5].clone(), values[:, 7:].reshape(-1, 3, 4).clone()),))


POSE_SUBFOLDER = "camera_poses"


def list_pose_files(folder: Path | None) -> list[str]:
    """Pose files (*.txt) directly in `folder` or in its camera_poses/ sub-folder, as names relative to it."""
    if folder is None or not folder.is_dir():
        return []
    names = [p.name for p in folder.glob("*.txt") if p.is_file()]
    sub = folder / POSE_SUBFOLDER
    if sub.is_dir():
        names += [f"{POSE_SUBFOLDER}/{p.name}" for p in sub.glob("*.txt") if p.is_file()]
    return sorted(names)


def resolve_pose_file(folder: Path | None, name: str) -> Path:
    """`name` inside `folder`, refusing names that climb out of it (absolute, '..'); the check is on the name, so a
    symlinked pose file still works."""
    if folder is None:
        raise FileNotFoundError("no input folder to read pose files from (ComfyUI's input/ folder)")
    root = folder.resolve()
    parts = Path(name.replace("\\", "/")).parts
    if not name or Path(name).is_absolute() or ".." in parts or len(parts) > 2:
        raise ValueError(f"pose file name {name!r} leaves the input folder; use a name listed by the node")
    candidate = root.joinpath(*parts)
    if not candidate.is_file():
        raise FileNotFoundError(
            f"pose file {name!r} not found: put CameraCtrl / RealEstate10K .txt pose files into {root} or "
            f"{root / POSE_SUBFOLDER}"
        )
    return candidate


# -- Plücker rays (the Control-Camera conditioning) ------------------------------------------------------------------


def pixel_intrinsics(intrinsics: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[N, 4] fractions → [N, 4] pixels (fx·W, fy·H, cx·W, cy·H) after correcting fx (wider reference) or fy
    against the 1280×720 aspect the poses refer to; float32 like the original."""
    fx, fy, cx, cy = intrinsics.double().unbind(-1)
    pose_ratio = POSE_REFERENCE_SIZE[0] / POSE_REFERENCE_SIZE[1]
    if pose_ratio > width / height:
        fx = (height * pose_ratio) * fx / width
    else:
        fy = (width / pose_ratio) * fy / height
    return torch.stack([fx * width, fy * height, cx * width, cy * height], dim=-1).float()


def relative_camera_to_world(world_to_camera: torch.Tensor) -> torch.Tensor:
    """[N, 3, 4] world-to-camera → [N, 4, 4] camera-to-world relative to the first camera (first = identity),
    computed in float64 and returned as float32."""
    count = world_to_camera.shape[0]
    w2c = torch.eye(4, dtype=torch.float64).repeat(count, 1, 1)
    w2c[:, :3] = world_to_camera.double()
    relative = w2c[:1] @ torch.linalg.inv(w2c)
    relative[0] = torch.eye(4, dtype=torch.float64)
    return relative.float()


def plucker_rays(intrinsics: torch.Tensor, world_to_camera: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Per-pixel Plücker embedding [N, 6, H, W] float32: channels [o × d, d], d the unit ray through each pixel
    centre rotated into the first camera's frame, o the camera centre."""
    fx, fy, cx, cy = pixel_intrinsics(intrinsics, width, height)[:, :, None, None].unbind(1)  # each [N, 1, 1]
    camera_to_world = relative_camera_to_world(world_to_camera)
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    x = ((xs - cx) / fx).expand(-1, height, width)
    y = ((ys - cy) / fy).expand(-1, height, width)
    directions = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [N, H, W, 3]
    directions = directions / directions.norm(dim=-1, keepdim=True)
    rotation = camera_to_world[:, None, :3, :3]  # [N, 1, 3, 3]
    directions = directions.flatten(1, 2) @ rotation.squeeze(1).transpose(-1, -2)  # [N, H·W, 3]
    origins = camera_to_world[:, None, :3, 3].expand_as(directions)
    moment = torch.linalg.cross(origins, directions, dim=-1)
    embedding = torch.cat([moment, directions], dim=-1).view(-1, height, width, PLUCKER_CHANNELS)
    return embedding.permute(0, 3, 1, 2).contiguous()


def camera_rays(path: CameraPath, frames: int, width: int, height: int) -> torch.Tensor:
    """[min(N, frames), 6, H, W]: the path's rays, truncated to the video (a shorter pose list stays short and is
    stretched over the latent frames by the conditioning, as the original)."""
    intrinsics, world_to_camera = path.pose_rows(frames)
    return plucker_rays(intrinsics[:frames], world_to_camera[:frames], width, height)
