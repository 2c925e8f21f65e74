"""Specification of models/vae.py: the EasyAnimate causal 3D VAE (docs/faithfulness.md, VAE).

Tiny widths (block_out_channels [8, 16, 32, 32], norm_num_groups 4) with the released block types,
layers_per_block 2 and latent_channels 16; fp32 on CPU. diffusers 0.42.1 is the numerical oracle for the V5.1 form
(no mid attention); the V5 mid attention is a hand-written formula spliced into the diffusers oracle where the
released code runs it (between the two mid-block resnets).
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tiny_checkpoints import tiny_model_dir

from models.loading.headers import CheckpointError, MissingFilesError, UnsafeCheckpointError
from models.vae import (
    VAE,
    SpatialSelfAttention,
    VAEConfig,
    VAEConfigError,
    VAEInputError,
    estimate_working_bytes,
    load_vae,
    plan_tiles,
    tile_spans,
)

TINY = dict(block_out_channels=(8, 16, 32, 32), norm_num_groups=4)
SCALE = 0.7125


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max|Δ| / max|ref|."""
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def tiny_vae(attention: bool) -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(mid_block_use_attention=attention, **TINY)).eval()


def perturb_(module: torch.nn.Module, scale: float, seed: int) -> None:
    """Add noise to every parameter, so zero-initialised biases and unit norm scales are non-trivial too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))


def locally_conditioned_vae() -> VAE:
    """A random VAE that behaves like a trained one where tiling is concerned: spatial conv taps damped around the
    centre tap and residual branches scaled down, so the receptive field is local. (Plain random weights make a
    chaotic network whose every pixel depends on the whole frame; no tiling can approximate that.)"""
    vae = tiny_vae(attention=False)
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if param.ndim == 5 and param.shape[-1] == 3:
                taps = torch.full((3, 3), 0.2)
                taps[1, 1] = 1.0
                param.mul_(taps)
            if name.endswith("conv2.weight"):
                param.mul_(0.1)
    return vae


@pytest.fixture(scope="module")
def diffusers_pair():
    """(ours, diffusers AutoencoderKLMagvit) with identical perturbed weights, V5.1 form."""
    from diffusers import AutoencoderKLMagvit

    torch.manual_seed(0)
    reference = AutoencoderKLMagvit(
        block_out_channels=list(TINY["block_out_channels"]), norm_num_groups=TINY["norm_num_groups"]
    ).eval()
    perturb_(reference, 0.1, seed=1)
    ours = tiny_vae(attention=False)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


# --- structure ----------------------------------------------------------------------------------------------------


def test_released_parameter_counts_match_the_published_files():
    # docs/checkpoints.md, VAE keys: V5 246,478,803 params (986 MB fp32); V5.1 / diffusers 244,375,507 (978 MB)
    with torch.device("meta"):
        v5 = VAE(VAEConfig(mid_block_use_attention=True))
        v5_1 = VAE(VAEConfig(mid_block_use_attention=False))
    assert sum(p.numel() for p in v5.parameters()) == 246_478_803
    assert sum(p.numel() for p in v5_1.parameters()) == 244_375_507


def test_state_dict_keys_equal_diffusers_plus_the_twenty_v5_attention_keys(diffusers_pair):
    _, reference = diffusers_pair
    ours_v5 = {k: tuple(v.shape) for k, v in tiny_vae(attention=True).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    extra = {k: v for k, v in ours_v5.items() if k not in theirs}
    assert {k: ours_v5[k] for k in theirs} == theirs
    assert len(extra) == 20
    assert extra["decoder.mid_block.attentions.0.to_out.weight"] == (32, 32)  # plain Linear, no ".0"
    assert extra["encoder.mid_block.attentions.0.group_norm.bias"] == (32,)


# --- parity with diffusers (V5.1 form) ------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_equals_diffusers_mode_times_scaling_factor(diffusers_pair, frames):
    ours, reference = diffusers_pair
    video = torch.rand(1, 3, frames, 16, 24, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    with torch.no_grad():
        expected = reference.encode(video).latent_dist.mode() * SCALE
    latents = ours.encode(video)
    assert latents.shape == (1, 16, 1 + (frames - 1) // 4, 2, 3)
    assert relative_error(latents, expected) <= 1e-5


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_decode_equals_diffusers_then_pipeline_postprocessing(diffusers_pair, frames):
    ours, reference = diffusers_pair
    latent_frames = 1 + (frames - 1) // 4
    latents = torch.randn(1, 16, latent_frames, 2, 3, generator=torch.Generator().manual_seed(frames))
    with torch.no_grad():
        raw_expected = reference.decode(latents / SCALE).sample
    raw = ours.decode(latents, postprocess=False)
    video = ours.decode(latents)
    assert raw.shape == video.shape == (1, 3, frames, 16, 24)
    assert relative_error(raw, raw_expected) <= 1e-5
    assert relative_error(video, (raw_expected.clamp(-1, 1) + 1) / 2) <= 1e-5
    assert 0.0 <= video.min().item() and video.max().item() <= 1.0


# --- V5 mid-block attention -----------------------------------------------------------------------------------------


def hand_attention(x: torch.Tensor, params: dict[str, torch.Tensor], groups: int) -> torch.Tensor:
    """The V5 mid-block attention written from its formula, frame by frame, one head of dim C:
    x + W_out·softmax(q kᵀ/√C)·v with q, k, v projections of GroupNorm(x) over the H·W pixels of one frame."""
    batch, channels, frames, height, width = x.shape
    out = torch.empty_like(x)
    for b in range(batch):
        for t in range(frames):
            frame = x[b, :, t].reshape(channels, height * width)  # [C, H*W]
            normed = F.group_norm(frame[None], groups, params["group_norm.weight"], params["group_norm.bias"], 1e-6)[
                0
            ].T
            q = normed @ params["to_q.weight"].T + params["to_q.bias"]
            k = normed @ params["to_k.weight"].T + params["to_k.bias"]
            v = normed @ params["to_v.weight"].T + params["to_v.bias"]
            weights = torch.softmax(q @ k.T / math.sqrt(channels), dim=-1)
            attended = (weights @ v) @ params["to_out.weight"].T + params["to_out.bias"] + frame.T
            out[b, :, t] = attended.T.reshape(channels, height, width)
    return out


def test_spatial_attention_equals_hand_computed_single_head_formula():
    torch.manual_seed(0)
    attention = SpatialSelfAttention(channels=8, heads=1, groups=4, ops=None)
    perturb_(attention, 0.3, seed=2)
    x = torch.randn(2, 8, 3, 4, 5)  # [B, C, T, H, W]
    with torch.no_grad():
        expected = hand_attention(x, dict(attention.named_parameters()), groups=4)
    assert relative_error(attention(x), expected) <= 1e-5


class _AttentionThenResnet(torch.nn.Module):
    """Stands in for diffusers' second mid-block resnet: the hand-written attention first, then that resnet, which is
    where the released V5 code puts its mid attention (resnet, attention, resnet)."""

    def __init__(self, resnet: torch.nn.Module, params: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.resnet, self.params = resnet, params

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.resnet(hand_attention(hidden_states, self.params, TINY["norm_num_groups"]))


def v5_oracle_pair():
    """(our V5 VAE, diffusers' V5.1 VAE with the hand-written attention spliced in before each mid block's second
    resnet), same weights."""
    from diffusers import AutoencoderKLMagvit

    torch.manual_seed(0)
    reference = AutoencoderKLMagvit(
        block_out_channels=list(TINY["block_out_channels"]), norm_num_groups=TINY["norm_num_groups"]
    ).eval()
    perturb_(reference, 0.1, seed=1)
    ours = tiny_vae(attention=True)
    perturb_(ours, 0.3, seed=11)  # random attention weights
    state = {k: v for k, v in ours.state_dict().items() if ".attentions." in k} | reference.state_dict()
    ours.load_state_dict(state, strict=True)
    for side in ("encoder", "decoder"):
        mid = getattr(reference, side).mid_block
        prefix = f"{side}.mid_block.attentions.0."
        params = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        mid.convs[1] = _AttentionThenResnet(mid.convs[1], params)
    return ours, reference


def test_v5_mid_block_runs_attention_between_its_two_resnets_like_the_released_code():
    ours, reference = v5_oracle_pair()
    latents = torch.randn(1, 16, 2, 2, 3, generator=torch.Generator().manual_seed(12))
    video = torch.rand(1, 3, 5, 16, 24, generator=torch.Generator().manual_seed(13)) * 2 - 1
    with torch.no_grad():
        decoded = reference.decode(latents / SCALE).sample
        encoded = reference.encode(video).latent_dist.mode() * SCALE
    assert relative_error(ours.decode(latents, postprocess=False), decoded) <= 1e-5
    assert relative_error(ours.encode(video), encoded) <= 1e-5


def test_mid_attention_changes_the_decoded_video():
    v5 = tiny_vae(attention=True)
    perturb_(v5, 0.1, seed=3)
    without = tiny_vae(attention=False)
    without.load_state_dict({k: v for k, v in v5.state_dict().items() if ".attentions." not in k}, strict=True)
    latents = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    with_attention = v5.decode(latents, postprocess=False)
    assert relative_error(without.decode(latents, postprocess=False), with_attention) >= 1e-2


# --- chunking -------------------------------------------------------------------------------------------------------


def test_chunked_encode_equals_whole_clip_pass_with_mid_attention():
    vae = tiny_vae(attention=True)
    perturb_(vae, 0.1, seed=5)
    video = torch.rand(1, 3, 13, 24, 32, generator=torch.Generator().manual_seed(6)) * 2 - 1
    whole = vae.encode(video, chunk_frames="whole")
    assert relative_error(vae.encode(video), whole) <= 1e-5  # released schedule: 1 + 4 + 4 + 4
    assert relative_error(vae.encode(video, chunk_frames=8), whole) <= 1e-5


def test_chunked_decode_equals_whole_clip_pass_with_mid_attention():
    vae = tiny_vae(attention=True)
    perturb_(vae, 0.1, seed=7)
    latents = torch.randn(1, 16, 4, 3, 4, generator=torch.Generator().manual_seed(8))
    whole = vae.decode(latents, chunk_frames="whole", postprocess=False)
    assert whole.shape == (1, 3, 13, 24, 32)
    assert relative_error(vae.decode(latents, postprocess=False), whole) <= 1e-5  # 1 + 1 + 1 + 1 latent frames
    assert relative_error(vae.decode(latents, chunk_frames=2, postprocess=False), whole) <= 1e-5


def test_vae_keeps_no_state_between_calls():
    vae = tiny_vae(attention=False)
    latents = torch.randn(2, 16, 2, 1, 2, generator=torch.Generator().manual_seed(9))
    first = vae.decode(latents)
    vae.decode(latents[:1, :, :1])  # a different clip in between
    assert torch.equal(vae.decode(latents), first)


# --- spatial tiling -------------------------------------------------------------------------------------------------


def test_tile_spans_cover_the_length_with_at_least_the_requested_overlap():
    spans = tile_spans(23, 8, 3)
    assert spans[0][0] == 0 and spans[-1][1] == 23
    assert all(end - start == 8 for start, end in spans)
    assert all(prev_end - start >= 3 for (_, prev_end), (start, _) in zip(spans, spans[1:]))


def test_tile_blend_weights_sum_to_one_everywhere():
    total = torch.zeros(13 * 8, 17 * 8)
    for tile in plan_tiles(13, 17, tile_latent=6, overlap_latent=2, out_scale=8):
        total[tile.y0 * 8 : tile.y1 * 8, tile.x0 * 8 : tile.x1 * 8] += tile.weight
    assert (total - 1).abs().max().item() <= 1e-6


def test_tiled_decode_of_a_position_wise_decoder_is_exact():
    """With a decoder that has no spatial context, tiling must reproduce the untiled result: only the tile
    placement and blending are under test here."""

    class PositionWise(torch.nn.Module):
        def forward(self, z, state):
            x = z[:, :3].repeat_interleave(8, dim=3).repeat_interleave(8, dim=4)
            if self in state.upsamplers_started:
                return x.repeat_interleave(4, dim=2)
            state.upsamplers_started.add(self)
            return torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(4, dim=2)], dim=2)

    vae = tiny_vae(attention=False)
    vae.decoder = PositionWise()
    latents = torch.randn(1, 16, 3, 13, 17, generator=torch.Generator().manual_seed(10))
    untiled = vae.decode(latents, postprocess=False)
    assert relative_error(vae.decode(latents, tile_size=48, tile_overlap=16, postprocess=False), untiled) <= 1e-6


def _seam_ratios(error: torch.Tensor, edges: list[int]) -> list[float]:
    """For rows and columns: (largest mean |error| within 4 px of a tile edge) / (largest elsewhere), and the same
    for the jump of the signed error between neighbouring pixels (a visible seam is such a jump). The outer 8 px
    of the frame, where the image border itself dominates, are left out."""
    ratios = []
    size = error.shape[-1]
    index = torch.arange(size)
    near_edge = torch.zeros(size, dtype=torch.bool)
    for edge in edges:
        near_edge |= (index - edge).abs() <= 4
    inside = (index >= 8) & (index < size - 8)
    for dim in (3, 4):
        others = tuple(d for d in range(5) if d != dim)
        level = error.abs().mean(dim=others)
        jump = error.diff(dim=dim).abs().mean(dim=others)
        ratios.append(level[near_edge].max().item() / level[~near_edge & inside].max().item())
        ratios.append(jump[near_edge[:-1]].max().item() / jump[(~near_edge & inside)[:-1]].max().item())
    return ratios


def test_tiled_decode_error_is_small_and_shows_no_seams():
    vae = locally_conditioned_vae()
    latents = torch.randn(1, 16, 2, 12, 12, generator=torch.Generator().manual_seed(11))  # 96 x 96 px, 5 frames
    untiled = vae.decode(latents)
    tiled = vae.decode(latents, tile_size=64, tile_overlap=32)  # 2 x 2 tiles: [0, 64) and [32, 96) px
    error = tiled - untiled
    # measured 0.016 max / 0.0024 mean on [0, 1]: per-tile GroupNorm statistics, spread over the whole frame
    assert error.abs().max().item() <= 0.025
    assert error.abs().mean().item() <= 4e-3
    assert max(_seam_ratios(error, edges=[32, 64])) <= 1.25  # measured <= 0.89

    # the measure does catch seams: abutting tiles (no overlap, so no blending) fail it clearly (measured >= 3.75)
    abutting = vae.decode(latents, tile_size=48, tile_overlap=0) - untiled  # [0, 48) and [48, 96) px
    assert max(_seam_ratios(abutting, edges=[48])) >= 3.0


def test_tiled_encode_error_is_small():
    vae = locally_conditioned_vae()
    video = torch.rand(1, 3, 5, 64, 64, generator=torch.Generator().manual_seed(12)) * 2 - 1
    untiled = vae.encode(video)
    tiled = vae.encode(video, tile_size=48, tile_overlap=16)  # 2 x 2 tiles: [0, 48) and [16, 64) px
    # measured 0.088 max relative, 0.021 mean relative: 6 x 6-latent tiles give noisy GroupNorm statistics
    assert relative_error(tiled, untiled) <= 0.15
    assert ((tiled - untiled).abs().mean() / untiled.abs().mean()).item() <= 0.04


def test_automatic_tile_size_follows_the_memory_budget():
    vae = tiny_vae(attention=False)
    config = vae.config
    whole_frame = estimate_working_bytes(config, 512, 512)
    assert vae.auto_tile_size(512, 512, memory_budget=whole_frame) is None
    assert vae.auto_tile_size(512, 512, memory_budget=estimate_working_bytes(config, 256, 256)) == 256
    assert vae.auto_tile_size(512, 512, memory_budget=estimate_working_bytes(config, 255, 255)) == 192
    assert vae.auto_tile_size(512, 512, memory_budget=1) == 128  # floor


def test_memory_budget_tiles_the_decode():
    vae = tiny_vae(attention=False)
    latents = torch.randn(1, 16, 1, 20, 9, generator=torch.Generator().manual_seed(13))  # 160 x 72 px
    calls = []
    vae.decode(
        latents,
        memory_budget=estimate_working_bytes(vae.config, 128, 72),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(1, 2), (2, 2)]  # 128 px tiles: 2 x 1 tiles x 1 chunk


# --- callbacks ------------------------------------------------------------------------------------------------------


def test_progress_reports_every_chunk_of_every_tile():
    vae = tiny_vae(attention=False)
    latents = torch.randn(1, 16, 3, 6, 6, generator=torch.Generator().manual_seed(14))
    calls = []
    vae.decode(latents, tile_size=32, tile_overlap=16, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(done, 12) for done in range(1, 13)]  # 2 x 2 tiles x 3 latent-frame chunks


def test_interrupt_aborts_between_chunks():
    vae = tiny_vae(attention=False)
    video = torch.zeros(1, 3, 9, 16, 16)
    seen = []

    def interrupt():
        if len(seen) == 2:
            raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        vae.encode(video, interrupt=interrupt, progress=lambda done, total: seen.append(done))
    assert seen == [1, 2]


# --- input errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames, nearest", [(2, "1 or 5"), (4, "1 or 5"), (7, "5 or 9"), (48, "45 or 49")])
def test_invalid_frame_counts_name_the_nearest_valid_counts(frames, nearest):
    vae = tiny_vae(attention=False)
    with pytest.raises(VAEInputError, match=f"has {frames} frames.*4k\\+1.*nearest valid counts are {nearest}"):
        vae.encode(torch.zeros(1, 3, frames, 8, 8))


def test_wrong_video_channel_count_is_refused():
    vae = tiny_vae(attention=False)
    with pytest.raises(VAEInputError, match=r"expects 3 \(RGB\) channels.*got 4"):
        vae.encode(torch.zeros(1, 4, 1, 8, 8))


def test_wrong_latent_channel_count_is_refused():
    vae = tiny_vae(attention=False)
    with pytest.raises(VAEInputError, match="expects 16 latent channels.*got 4"):
        vae.decode(torch.zeros(1, 4, 1, 2, 2))


def test_frame_size_not_divisible_by_eight_is_refused():
    vae = tiny_vae(attention=False)
    with pytest.raises(VAEInputError, match="divisible by 8; got 12x16"):
        vae.encode(torch.zeros(1, 3, 1, 12, 16))


def test_unsupported_config_is_refused():
    with pytest.raises(VAEConfigError, match="spatial_group_norm is False"):
        VAEConfig.from_dict({"spatial_group_norm": False})


# --- loading --------------------------------------------------------------------------------------------------------


def _vae_folder(name: str):
    return tiny_model_dir(name) / "vae"


def test_load_v5_folder_builds_mid_attention_and_holds_the_file_tensors():
    vae = load_vae(tiny_model_dir("EasyAnimateV5-7b-zh"))
    on_disk = load_file(str(_vae_folder("EasyAnimateV5-7b-zh") / "diffusion_pytorch_model.safetensors"))
    state = vae.state_dict()
    assert vae.config.mid_block_use_attention is True
    assert set(state) == set(on_disk)
    assert all(torch.equal(state[k], on_disk[k]) for k in on_disk)


def test_load_v5_1_original_and_diffusers_folders_give_the_same_model():
    original = load_vae(tiny_model_dir("EasyAnimateV5.1-12b-zh-InP"))
    diffusers_layout = load_vae(tiny_model_dir("EasyAnimateV5.1-12b-zh-InP-diffusers") / "vae")
    assert original.config.mid_block_use_attention is False
    assert diffusers_layout.config.mid_block_use_attention is False
    latents = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(15))
    assert torch.equal(original.decode(latents), diffusers_layout.decode(latents))


def test_load_streams_into_the_requested_dtype_and_upcasts_v5_fp16_compute():
    bf16 = load_vae(tiny_model_dir("EasyAnimateV5.1-12b-zh"), dtype=torch.bfloat16)
    fp16_v5 = load_vae(tiny_model_dir("EasyAnimateV5-12b-zh"), dtype=torch.float16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fp16_v5.parameters()} == {torch.float16}
    assert fp16_v5.compute_dtype == torch.float32  # reference upcast_vae for V5 + fp16 (docs/faithfulness.md, VAE)
    latents = torch.randn(1, 16, 1, 2, 2, generator=torch.Generator().manual_seed(16))
    assert bf16.decode(latents).dtype == torch.float32


def test_load_single_file_infers_v5_from_attention_keys(tmp_path):
    source = _vae_folder("EasyAnimateV5-7b-zh") / "diffusion_pytorch_model.safetensors"
    single = tmp_path / "easyanimate_v5_vae.safetensors"
    shutil.copyfile(source, single)
    vae = load_vae(single, config={"norm_num_groups": 4})
    assert vae.config.mid_block_use_attention is True
    assert vae.config.block_out_channels == (8, 16, 32, 32)
    with pytest.raises(VAEConfigError, match="norm_num_groups 32 does not divide.*config="):
        load_vae(single)  # the released 32 groups do not fit 8-wide tiny blocks, and the file cannot tell


def test_load_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        load_vae(tmp_path / "nowhere")


def test_load_folder_without_weights_names_the_expected_file(tmp_path):
    (tmp_path / "vae").mkdir()
    shutil.copyfile(_vae_folder("EasyAnimateV5.1-12b-zh") / "config.json", tmp_path / "vae" / "config.json")
    with pytest.raises(MissingFilesError, match=str(tmp_path / "vae" / "diffusion_pytorch_model.safetensors")):
        load_vae(tmp_path)


def test_load_truncated_file_is_reported_as_corrupt(tmp_path):
    folder = tmp_path / "vae"
    shutil.copytree(_vae_folder("EasyAnimateV5.1-12b-zh"), folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.unlink()  # the copy may be a hard link into the shared tiny set: never write through it
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_vae(folder)


def test_load_refuses_pickle_files(tmp_path):
    pickle_file = tmp_path / "vae.ckpt"
    pickle_file.write_bytes(b"not opened")
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        load_vae(pickle_file)
    folder = tmp_path / "vae"
    folder.mkdir()
    shutil.copyfile(_vae_folder("EasyAnimateV5.1-12b-zh") / "config.json", folder / "config.json")
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        load_vae(folder)


def test_load_v5_config_with_v5_1_weights_is_refused(tmp_path):
    folder = tmp_path / "vae"
    shutil.copytree(_vae_folder("EasyAnimateV5.1-12b-zh"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["mid_block_use_attention"] = True
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(VAEConfigError, match="mid_block_use_attention=True.*lack the mid-block attention"):
        load_vae(folder)


def test_load_with_a_missing_tensor_lists_it(tmp_path):
    folder = tmp_path / "vae"
    folder.mkdir()
    shutil.copyfile(_vae_folder("EasyAnimateV5.1-12b-zh") / "config.json", folder / "config.json")
    tensors = load_file(str(_vae_folder("EasyAnimateV5.1-12b-zh") / "diffusion_pytorch_model.safetensors"))
    del tensors["decoder.conv_out.bias"]
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match="missing[\\s\\S]*decoder.conv_out.bias"):
        load_vae(folder)
