"""Teacher-forcing training under SP (Balanced and naive layouts) equals one device: gloo, torchrun.

The multi-process test runs tf_worker.py (same model, same batch on every rank; the reference is
the single-device objective); the one-process tests check the splits and the interleaved mask.
"""
from __future__ import annotations

import json

import pytest
import torch

from longlive.errors import ConfigError
from longlive.model.attention import dense_mask, teacher_forcing_mask
from longlive_plugins.sp_balanced.teacher import balanced_split, naive_split
from test_ulysses import HERE, _torchrun


@pytest.mark.parametrize("nproc", [2, 4])
def test_sp_teacher_forcing_loss_and_gradients_equal_one_device(nproc, tmp_path):
    out = tmp_path / "tf.json"
    names = ["balanced", "naive"] + (["balanced+ckpt"] if nproc == 2 else [])  # + recomputed activations
    _torchrun(nproc, [str(HERE / "tf_worker.py"), str(out), *names], cwd=HERE)
    results = json.loads(out.read_text())
    for name, r in results.items():
        assert r["finite"], name
        assert abs(r["loss_sp"] - r["loss_ref"]) <= 1e-6 * abs(r["loss_ref"]), (name, r)
        assert r["nonzero_grads"] == r["grads_compared"] > 100, (name, r)  # every parameter, none trivially 0
        assert r["max_grad_diff"] <= 1e-6, (name, r)  # gradients are ~2e-2: 5e-5 relative at most (fp32)
        # 3 AdamW steps (lr 1e-3): Adam divides by sqrt(v), which magnifies 1e-9 gradient differences of
        # near-zero gradients; 5e-5 is 5 % of one step
        assert r["max_param_diff_after_steps"] <= 5e-5, (name, r)
        assert len(set(r["tokens_per_rank"])) == 1  # the all-to-all's equal pieces
    balanced, naive = results["balanced"]["loss_tokens_per_rank"], results["naive"]["loss_tokens_per_rank"]
    assert len(set(balanced)) == 1 and sum(balanced) == sum(naive)  # every rank carries 1/sp of the loss
    assert naive[: nproc // 2] == [0] * (nproc // 2) and len(set(naive[nproc // 2:])) == 1  # half the ranks: none


def _interleaved_to_natural(frames: int, tokens_per_frame: int, slices: int) -> torch.Tensor:
    """Position in [clean ; noisy] of each position of the interleaved order of `slices` slices."""
    half = frames * tokens_per_frame // slices
    p = torch.arange(2 * frames * tokens_per_frame)
    token = p // (2 * half) * half + p % half  # index in the video
    return torch.where(p % (2 * half) < half, token, token + frames * tokens_per_frame)


@pytest.mark.parametrize("slices", [2, 3, 6])
def test_interleaved_mask_is_the_teacher_forcing_mask_permuted(slices):
    frames, tpf, fpb = 6, 3, 2
    natural = dense_mask(teacher_forcing_mask(frames, tpf, fpb), 2 * frames * tpf, 2 * frames * tpf)
    interleaved = dense_mask(teacher_forcing_mask(frames, tpf, fpb, slices), 2 * frames * tpf, 2 * frames * tpf)
    perm = _interleaved_to_natural(frames, tpf, slices)
    assert torch.equal(interleaved, natural[perm][:, perm])
    assert not torch.equal(interleaved, natural)


def test_splits():
    for r in range(4):
        b = balanced_split(8, 4, r)
        assert (b.clean_start, b.clean_frames, b.noisy_start, b.noisy_frames, b.mask_slices) == (2 * r, 2, 2 * r, 2, 4)
    pieces = [naive_split(6, 4, r) for r in range(4)]  # [clean 0..5 ; noisy 0..5] in pieces of 3
    assert [(p.clean_start, p.clean_frames, p.noisy_start, p.noisy_frames) for p in pieces] == [
        (0, 3, 0, 0), (3, 3, 0, 0), (6, 0, 0, 3), (6, 0, 3, 3)]
    with pytest.raises(ConfigError, match="train.num_frames"):
        balanced_split(6, 4, 0)
    with pytest.raises(ConfigError, match="train.num_frames"):
        naive_split(5, 4, 0)


def test_mask_pairs_count_the_mask():
    from longlive_plugins.sp_balanced.costs import mask_pairs

    frames, tpf, fpb = 6, 3, 2
    dense = dense_mask(teacher_forcing_mask(frames, tpf, fpb, 3), 2 * frames * tpf, 2 * frames * tpf)
    assert int(dense.sum()) == mask_pairs(frames, tpf, fpb)


def test_costs_per_rank_balanced_vs_naive():
    from longlive_plugins.sp_balanced.costs import rank_costs

    geometry = dict(frames=8, tokens_per_frame=4, frames_per_block=2, layers=2, dim=8, ffn_dim=16, heads=4,
                    head_dim=2, text_len=3, out_channels=5, vae_latents=[0] * 4)
    balanced = rank_costs([balanced_split(8, 4, r) for r in range(4)], **geometry)
    naive = rank_costs([naive_split(8, 4, r) for r in range(4)], **geometry)
    assert [c.loss_tokens for c in balanced] == [8] * 4 and [c.loss_tokens for c in naive] == [0, 0, 16, 16]
    assert {c.gemm_flops for c in balanced + naive} == {balanced[0].gemm_flops}  # Ulysses: equal GEMM work


def test_flex_blocks_equal_in_both_orders_when_chunks_fill_blocks():
    """Chunks of whole 128-token blocks (as at the 5B: 7,040 = 55 x 128): no partial block in either
    order and the same number of full blocks, so flex does the same work for balanced and naive."""
    from longlive.model.attention import build_block_mask

    frames, tpf, fpb = 8, 64, 2  # chunk = 128 tokens
    length = 2 * frames * tpf
    counts = []
    for slices in (1, 4):
        block_mask = build_block_mask(teacher_forcing_mask(frames, tpf, fpb, slices), length, length, "cpu")
        assert int(block_mask.kv_num_blocks.sum()) == 0  # partial blocks
        counts.append(int(block_mask.full_kv_num_blocks.sum()))
    assert counts[0] == counts[1] > 0
