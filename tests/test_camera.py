"""Camera paths and Plücker channels against independent computations written from the formulas (numpy, float64).

Nothing here calls models/camera.py helpers to build an expectation: the oracle re-derives intrinsics scaling, the
relative poses, the rays and the trilinear resize from docs/camera.md.
"""

import math

import numpy as np
import pytest
import torch

from models import camera
from models.pipeline import CAMERA_SCALE, control_latents

REFERENCE_RATIO = 1280 / 720


def random_w2c(count, seed):
    """Plausible world-to-camera rows [count, 3, 4]: rotations from random axis-angles, random translations."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = rng.uniform(-0.6, 0.6)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rotation = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
        rows.append(np.concatenate([rotation, rng.normal(size=(3, 1))], axis=1))
    return np.stack(rows)


def oracle_plucker(intrinsics, w2c, width, height):
    """[N, 6, H, W] from the formula, one pixel grid in float64."""
    intrinsics = np.array(intrinsics, dtype=np.float64)
    fx, fy, cx, cy = (intrinsics[:, k].copy() for k in range(4))
    if REFERENCE_RATIO > width / height:
        fx = fx * (height * REFERENCE_RATIO) / width
    else:
        fy = fy * (width / REFERENCE_RATIO) / height
    fx, fy, cx, cy = fx * width, fy * height, cx * width, cy * height
    full = np.tile(np.eye(4), (len(w2c), 1, 1))
    full[:, :3] = w2c
    first = full[0]
    out = np.zeros((len(w2c), 6, height, width))
    for n in range(len(w2c)):
        c2w = np.eye(4) if n == 0 else first @ np.linalg.inv(full[n])
        for row in range(height):
            for col in range(width):
                d = np.array([(col + 0.5 - cx[n]) / fx[n], (row + 0.5 - cy[n]) / fy[n], 1.0])
                d = c2w[:3, :3] @ (d / np.linalg.norm(d))
                o = c2w[:3, 3]
                out[n, :3, row, col] = np.cross(o, d)
                out[n, 3:, row, col] = d
    return out


def linear_resize_matrix(source, target):
    """[target, source] weights of a 1-D linear resize with align_corners=False (half-pixel centres, edge clamp)."""
    weights = np.zeros((target, source))
    scale = source / target
    for out in range(target):
        position = max((out + 0.5) * scale - 0.5, 0.0)
        low = min(int(math.floor(position)), source - 1)
        high = min(low + 1, source - 1)
        frac = position - low
        weights[out, low] += 1 - frac
        weights[out, high] += frac
    return weights


def oracle_camera_channels(rays, latent_frames, latent_h, latent_w):
    """[6, F, h, w]: first frame resized alone, the rest to F-1 frames, × 6."""
    rays = np.moveaxis(rays, 0, 1)  # [6, T, H, W]
    rows = linear_resize_matrix(rays.shape[2], latent_h)
    cols = linear_resize_matrix(rays.shape[3], latent_w)
    spatial = np.einsum("hy,ctyx,wx->cthw", rows, rays, cols)
    first = spatial[:, :1]
    parts = [first]
    if latent_frames > 1:
        rest = spatial[:, 1:] if spatial.shape[1] > 1 else spatial
        parts.append(np.einsum("ft,cthw->cfhw", linear_resize_matrix(rest.shape[1], latent_frames - 1), rest))
    return np.concatenate(parts, axis=1) * 6


def path_from_rows(intrinsics, w2c):
    return camera.CameraPath(
        (camera.PoseRows(torch.tensor(intrinsics, dtype=torch.float64), torch.tensor(w2c, dtype=torch.float64)),)
    )


@pytest.mark.parametrize("width, height", [(48, 32), (32, 48), (80, 16)])  # 3:2, portrait, wider than 16:9
def test_plucker_rays_match_the_formula_on_non_square_frames(width, height):
    w2c = random_w2c(3, seed=width)
    intrinsics = [[0.47, 0.84, 0.5, 0.5], [0.5, 0.8, 0.45, 0.55], [0.44, 0.9, 0.52, 0.48]]
    rays = camera.plucker_rays(torch.tensor(intrinsics), torch.tensor(w2c), width, height)
    assert rays.shape == (3, 6, height, width) and rays.dtype == torch.float32
    np.testing.assert_allclose(rays.numpy(), oracle_plucker(intrinsics, w2c, width, height), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("poses, frames", [(7, 5), (3, 9), (9, 9), (4, 1), (1, 9)])
def test_camera_channels_follow_the_original_for_longer_shorter_and_single_frame(poses, frames):
    width, height = 48, 32
    w2c = random_w2c(poses, seed=poses * 10 + frames)
    intrinsics = [[0.474812461, 0.844111024, 0.5, 0.5]] * poses
    path = path_from_rows(intrinsics, w2c)
    latent_frames = (frames - 1) // 4 + 1
    shape = (1, 16, latent_frames, height // 8, width // 8)
    rays = camera.camera_rays(path, frames, width, height)
    assert rays.shape[0] == min(poses, frames)  # a longer list is cut, a shorter one kept as it is
    channels = control_latents(None, None, shape, camera=rays.permute(1, 0, 2, 3).unsqueeze(0))
    kept = min(poses, frames)
    expected = oracle_camera_channels(oracle_plucker(intrinsics[:kept], w2c[:kept], width, height), *shape[2:])
    assert channels.shape == (1, 6, *shape[2:])
    np.testing.assert_allclose(channels[0].numpy(), expected, atol=1e-4, rtol=1e-5)
    assert CAMERA_SCALE == 6.0


def oracle_move(angle, translation, speed, frames):
    rows = []
    for i in range(frames):
        ax, ay, az = (i / frames) * speed * (math.pi / 3) * np.array(angle, dtype=np.float64)
        rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
        ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
        rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
        t = (i / frames) * speed * 1.5 * np.array(translation, dtype=np.float64).reshape(3, 1)
        rows.append(np.concatenate([rz @ ry @ rx, t], axis=1))
    return np.stack(rows)


@pytest.mark.parametrize(
    "name, angle, translation",
    [
        ("Pan Left", (0, 0, 0), (1, 0, 0)),
        ("Pan Up", (0, 0, 0), (0, 1, 0)),
        ("Zoom In", (0, 0, 0), (0, 0, -2)),
        ("ACW", (0, 0, 1), (0, 0, 0)),
        ("CW", (0, 0, -1), (0, 0, 0)),
    ],
)
def test_presets_follow_the_official_motion_formula(name, angle, translation):
    intrinsics, w2c = camera.preset(name, speed=1.7).pose_rows(13)
    np.testing.assert_allclose(w2c.numpy(), oracle_move(angle, translation, 1.7, 13), atol=1e-12)
    np.testing.assert_allclose(intrinsics.numpy(), [[0.474812461, 0.844111024, 0.5, 0.5]] * 13)


def test_combined_presets_add_their_angles_and_translations():
    _, w2c = camera.preset(["Pan Left", "Zoom In", "ACW", "Static"], speed=0.5).pose_rows(9)
    np.testing.assert_allclose(w2c.numpy(), oracle_move((0, 0, 1), (1, 0, -2), 0.5, 9), atol=1e-12)


def test_joined_moves_continue_from_the_last_pose_of_the_first_and_fill_the_frame_count():
    first, second = camera.preset("ACW", 1.0), camera.preset("Pan Right", 2.0)
    _, w2c = first.then(second).pose_rows(9)
    assert w2c.shape[0] == 9  # 5 + 4 frames: the sampler's count
    a, b = oracle_move((0, 0, 1), (0, 0, 0), 1.0, 5), oracle_move((0, 0, 0), (-1, 0, 0), 2.0, 4)
    r_last, t_last = a[-1][:, :3], a[-1][:, 3:]
    joined = [np.concatenate([m[:, :3] @ r_last, m[:, 3:] + m[:, :3] @ t_last], axis=1) for m in b]
    np.testing.assert_allclose(w2c.numpy(), np.concatenate([a, np.stack(joined)]), atol=1e-12)


def test_a_pose_file_joined_after_a_preset_continues_from_its_last_pose():
    turned = random_w2c(4, seed=11)  # rotations about arbitrary axes: the composition order matters
    rows = camera.CameraPath((camera.PoseRows(torch.full((4, 4), 0.5, dtype=torch.float64), torch.tensor(turned)),))
    _, w2c = camera.preset(["CW", "Pan Up"], 2.0).then(rows).pose_rows(9)
    a = oracle_move((0, 0, -1), (0, 1, 0), 2.0, 5)  # 9 frames minus the file's 4
    r_last, t_last = a[-1][:, :3], a[-1][:, 3:]
    joined = [np.concatenate([m[:, :3] @ r_last, m[:, 3:] + m[:, :3] @ t_last], axis=1) for m in turned]
    np.testing.assert_allclose(w2c.numpy(), np.concatenate([a, np.stack(joined)]), atol=1e-12)


def test_intrinsics_override_every_frame():
    intrinsics, _ = camera.preset("Zoom Out").with_intrinsics(0.6, 0.7, 0.4, 0.45).pose_rows(5)
    np.testing.assert_allclose(intrinsics.numpy(), [[0.6, 0.7, 0.4, 0.45]] * 5)


def test_pose_file_is_read_and_a_24_fps_file_keeps_every_third_line_at_8_fps(tmp_path):
    w2c = random_w2c(10, seed=3)
    lines = ["https://www.youtube.com/watch?v=example"]
    for n in range(10):
        lines.append(" ".join(str(v) for v in [n * 1001, 0.4 + n / 100, 0.8, 0.5, 0.5, 0, 0, *w2c[n].ravel()]))
    (tmp_path / "orbit.txt").write_text("\n".join(lines) + "\n")
    intrinsics, rows = camera.read_pose_file(tmp_path / "orbit.txt", fps=8).pose_rows(49)
    np.testing.assert_allclose(rows.numpy(), w2c[::3])
    np.testing.assert_allclose(intrinsics[:, 0].numpy(), [0.4, 0.43, 0.46, 0.49])


def test_pose_file_with_wrong_columns_names_the_file_and_the_layout(tmp_path):
    (tmp_path / "bad.txt").write_text("url\n1 2 3\n")
    with pytest.raises(ValueError, match=r"bad.txt.*19 numbers"):
        camera.read_pose_file(tmp_path / "bad.txt")


# -- the whole Control-Camera loop ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["12b", "7b"])
def test_control_camera_generation_matches_diffusers_fed_the_oracle_rays(tiny_root, size):
    """Ours from a preset path vs diffusers' control pipeline fed the rays computed here from the formula; the
    7B-like model checks channel assembly and shapes (diffusers differs from the original on its non-MMDiT blocks,
    so there only ours runs, and a wrong camera would still change the result)."""
    import test_pipeline as tp

    model_dir = tiny_root / f"tiny-EasyAnimateV5.1-{size}-zh-Control-Camera"
    embeds = (
        torch.randn(1, tp.TEXT_LEN, 64, generator=torch.Generator().manual_seed(3)),
        torch.randn(1, tp.TEXT_LEN, 64, generator=torch.Generator().manual_seed(4)),
    )
    reference = tp._frames(1, 5)
    path = camera.preset(["Pan Left", "ACW"], speed=1.3)
    ours = tp._ours(model_dir, embeds, tp._request(camera=path, reference_image=reference))
    assert ours.shape == pipeline_latent_shape(tp)
    static = tp._ours(model_dir, embeds, tp._request(camera=camera.preset("Static"), reference_image=reference))
    assert tp._relative_error(ours, static) > 100 * tp.REL_TOL  # the camera reaches the model
    if size == "7b":
        return
    import diffusers

    intrinsics = [[0.474812461, 0.844111024, 0.5, 0.5]] * tp.FRAMES
    w2c = oracle_move((0, 0, 1), (1, 0, 0), 1.3, tp.FRAMES)
    rays = torch.tensor(oracle_plucker(intrinsics, w2c, tp.WIDTH, tp.HEIGHT), dtype=torch.float32)
    theirs = tp._theirs(
        diffusers.EasyAnimateControlPipeline,
        model_dir,
        embeds,
        control_camera_video=rays.permute(1, 0, 2, 3).unsqueeze(0),
        ref_image=reference.unsqueeze(2),
    )
    assert tp._relative_error(ours, theirs) <= tp.REL_TOL


def pipeline_latent_shape(tp):
    from models.pipeline import latent_shape

    return latent_shape(tp.WIDTH, tp.HEIGHT, tp.FRAMES)


def _variant(name):
    from models.variants import VARIANTS

    return VARIANTS[name]


def test_a_control_camera_model_without_a_camera_is_refused_before_loading():
    from models import pipeline

    request = pipeline.Request(width=64, height=64, frames=5, steps=1, guidance_scale=1.0, seed=0, scheduler="Flow")
    with pytest.raises(ValueError, match="Control-Camera model: connect a camera"):
        pipeline.check_request(_variant("EasyAnimateV5.1-12b-zh-Control-Camera"), request)


@pytest.mark.parametrize(
    "name",
    [
        "EasyAnimateV5.1-12b-zh-Control",
        "EasyAnimateV5.1-7b-zh-InP",
        "EasyAnimateV5-12b-zh",
    ],
)
def test_a_camera_on_another_model_is_refused_before_loading(name):
    from models import pipeline

    request = pipeline.Request(
        width=64,
        height=64,
        frames=5,
        steps=1,
        guidance_scale=1.0,
        seed=0,
        scheduler="Flow",
        camera=camera.preset("Pan Up"),
    )
    with pytest.raises(ValueError, match="needs a Control-Camera model"):
        pipeline.check_request(_variant(name), request)


@pytest.mark.parametrize(
    "name, with_camera", [("EasyAnimateV5.1-7b-zh-Control-Camera", False), ("EasyAnimateV5.1-12b-zh-InP", True)]
)
def test_sampler_node_refuses_a_camera_mismatch_before_loading_the_transformer(pack, name, with_camera):
    sampler_node = pack.NODE_CLASS_MAPPINGS["EasyAnimateVideoSampler"]

    class UnloadableModel:
        variant = _variant(name)

        def transformer(self, **kwargs):
            raise AssertionError("the transformer was loaded before the inputs were checked")

    class Embeddings:
        version = "v5.1"

    with pytest.raises(ValueError, match="Control-Camera"):
        sampler_node().sample(
            UnloadableModel(),
            Embeddings(),
            64,
            64,
            5,
            1,
            6.0,
            0,
            "auto",
            0.0,
            0,
            camera=camera.preset("Pan Up") if with_camera else None,
        )


def test_pose_file_names_cannot_leave_the_input_folder_but_symlinked_files_work(tmp_path):
    inputs, elsewhere = tmp_path / "input", tmp_path / "elsewhere"
    (inputs / "camera_poses").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_text("url\n")
    (inputs / "camera_poses" / "linked.txt").symlink_to(elsewhere / "secret.txt")
    (inputs / "plain.txt").write_text("url\n")
    assert camera.list_pose_files(inputs) == ["camera_poses/linked.txt", "plain.txt"]
    assert camera.resolve_pose_file(inputs, "camera_poses/linked.txt").read_text() == "url\n"
    for name in ["../elsewhere/secret.txt", str(elsewhere / "secret.txt"), "camera_poses/../../elsewhere/secret.txt"]:
        with pytest.raises(ValueError, match="leaves the input folder"):
            camera.resolve_pose_file(inputs, name)
    with pytest.raises(FileNotFoundError, match="camera_poses"):
        camera.resolve_pose_file(inputs, "missing.txt")
