"""Each loss of ``trainer.models.losses`` against its definition: a brute-force loop or a hand-computed case,
values and gradients."""

from __future__ import annotations

import math

import torch

from trainer.models.components.lift_splat import DepthBins

DBOUND = (1.0, 9.0, 2.0)  # D = 4 bins of 2 m


def test_gaussian_focal_loss_equals_a_per_cell_loop():
    from trainer.models.losses import gaussian_focal_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    target = torch.rand(2, 3, 4, 5, dtype=torch.float64) * 0.9
    target[0, 1, 2, 3] = target[1, 0, 0, 0] = 1.0  # two peaks
    got = gaussian_focal_loss(logits, target, num_objects=2)
    total = 0.0
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in logits.shape)):
        x, t = logits[tuple(idx)], target[tuple(idx)]
        p = torch.sigmoid(x)
        if t == 1:
            total = total + torch.log(p) * (1 - p) ** 2
        else:
            total = total + torch.log(1 - p) * p**2 * (1 - t) ** 4
    ref = -total / 2
    assert torch.allclose(got, ref)
    (g_got,) = torch.autograd.grad(got, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(g_got, g_ref)
    assert torch.allclose(gaussian_focal_loss(logits, target, 0), -total)  # max(num_objects, 1)


def test_masked_l1_equals_a_loop_and_ignores_masked_nans():
    from trainer.models.losses import masked_l1

    torch.manual_seed(1)
    pred = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 4, 3, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    target[0, 1] = float("nan")  # masked out: must not poison the value or the gradient
    got = masked_l1(pred, target, mask)
    ref = sum((pred[b, k] - target[b, k]).abs() for b in range(2) for k in range(4) if mask[b, k]) / 4
    assert torch.allclose(got, ref)
    (g,) = torch.autograd.grad(got.sum(), pred)
    (g_ref,) = torch.autograd.grad(ref.sum(), pred)
    assert torch.isfinite(g).all() and torch.allclose(g, g_ref)
    assert masked_l1(pred, target, torch.zeros_like(mask)).abs().sum() == 0


def test_depth_loss_of_a_uniform_distribution_is_the_hand_computed_bce():
    from trainer.models.losses import depth_loss

    bins = DepthBins(DBOUND)  # D = 4
    logits = torch.zeros(1, 1, 4, 1, 2)  # uniform: p = 1/4 in every bin
    depth_map = torch.tensor([5.0, 0.0]).view(1, 1, 1, 2)  # one cell with LiDAR (bin 2), one without
    # BCE summed over bins, over the one valid cell: -(ln(1/4) + 3 ln(3/4))
    expected = -(math.log(0.25) + 3 * math.log(0.75))
    assert math.isclose(depth_loss(logits, depth_map, bins).item(), expected, rel_tol=1e-5)
    confident = torch.full((1, 1, 4, 1, 2), -20.0)
    confident[:, :, 2] = 20.0  # all mass on the right bin
    assert depth_loss(confident, depth_map, bins).item() < 1e-6
    assert depth_loss(logits, torch.zeros(1, 1, 1, 2), bins).item() == 0.0  # no LiDAR: no loss


def test_depth_loss_reads_nothing_back_to_the_host(monkeypatch):
    """On a GPU every value read back (``any()`` in an ``if``, a boolean index) is a device sync in the step."""
    from trainer.models.losses import depth_loss

    bins = DepthBins(DBOUND)
    logits = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
    for depth in (torch.rand(2, 3, 5, 6) * 10, torch.zeros(2, 3, 5, 6)):  # with and without LiDAR cells
        ref = depth_loss(logits, depth, bins)
        reads: list[str] = []
        _count_host_reads(monkeypatch, reads)
        loss = depth_loss(logits, depth, bins)
        monkeypatch.undo()
        assert reads == [], reads
        torch.testing.assert_close(loss, ref)
        loss.backward()  # in the graph even without a target (DDP)
        assert logits.grad is not None


def _count_host_reads(monkeypatch, reads: list[str]) -> None:
    """Record in ``reads`` every tensor method that brings a value to the host, and every boolean index."""

    def counted(name, real):
        def method(self, *args, **kwargs):
            if name != "__getitem__":
                reads.append(name)
            elif any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool
                for i in (args[0] if isinstance(args[0], tuple) else args[:1])
            ):
                reads.append("boolean index")
            return real(self, *args, **kwargs)

        return method

    for name in ("__bool__", "item", "tolist", "nonzero", "cpu", "__getitem__"):
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))


def test_distill_cosine_loss_averages_one_minus_cos_over_occupied_cells():
    from trainer.models.losses import distill_cosine_loss

    target = torch.randn(2, 5, 3, 3)
    count = torch.zeros(2, 3, 3, dtype=torch.int32)
    count[0, 0, 0] = count[1, 2, 1] = 7
    pred = target.clone()
    pred[1, :, 2, 1] *= -3.0  # opposite direction (cos = -1) at the second occupied cell
    pred[0, :, 1, 1] = torch.randn(5)  # an empty cell's prediction does not count
    assert math.isclose(distill_cosine_loss(pred, target, count).item(), (0.0 + 2.0) / 2, rel_tol=1e-5)
    assert distill_cosine_loss(pred, target, torch.zeros_like(count)).item() == 0.0


def test_distill_cell_loss_equals_the_full_map_loss_in_value_and_gradients():
    """Projecting only the occupied cells gives the loss, and the gradients, of projecting the whole map."""
    from trainer.models.losses import distill_cell_loss, distill_cosine_loss

    torch.manual_seed(0)
    proj = torch.nn.Conv2d(6, 5, 1)
    target = torch.randn(2, 5, 4, 3)
    count = (torch.rand(2, 4, 3) < 0.4).to(torch.int32) * 3
    count[0, 0, 0] = 1  # at least one target
    bev_a = torch.randn(2, 6, 4, 3, requires_grad=True)
    bev_b = bev_a.detach().clone().requires_grad_(True)
    full = distill_cosine_loss(proj(bev_a), target, count)
    grads_full = torch.autograd.grad(full, [bev_a, proj.weight, proj.bias])
    cells = distill_cell_loss(bev_b, proj, target, count)
    grads_cells = torch.autograd.grad(cells, [bev_b, proj.weight, proj.bias])
    assert torch.allclose(full, cells, atol=1e-6)
    for g_full, g_cells in zip(grads_full, grads_cells):
        assert torch.allclose(g_full, g_cells, atol=1e-6)
    empty = distill_cell_loss(bev_b, proj, target, torch.zeros_like(count))
    assert empty.item() == 0.0 and empty.requires_grad
