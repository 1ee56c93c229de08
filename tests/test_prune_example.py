"""examples/prune_by_contribution.py: its pruning rules, and a short run in which pruning by the
rasterizer's contribution statistics keeps more of the fit than pruning by opacity or at
random."""
import importlib.util
import json
import os

import pytest
import torch

from diff_gaussian_rasterization_depth import _backend

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                     "prune_by_contribution.py")
_spec = importlib.util.spec_from_file_location("prune_by_contribution", _PATH)
pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pc)

needs_backend = pytest.mark.skipif(_backend._C is None,
                                   reason="the compiled extension is not built")


def test_keep_mask_drops_the_lowest_scores():
    """Each rule drops round(fraction P) Gaussians, those of the lowest scores (random: a
    seeded draw, the same for the same seed)."""
    gen = torch.Generator().manual_seed(0)
    P = 200
    model = pc.sv.GaussianModel(torch.randn(P, 3, generator=gen), torch.zeros(P, 3),
                                torch.randn(P, 4, generator=gen), torch.randn(P, 1, generator=gen),
                                torch.zeros(P, 1, 3))
    scores = torch.rand(P, 2, generator=gen)
    for rule, score in (("opacity", model.opacity_logits.detach()[:, 0]),
                        ("weight sum", scores[:, 0]), ("max weight", scores[:, 1])):
        keep = pc.keep_mask(rule, model, scores, 0.3, seed=0)
        assert int(keep.sum()) == 140
        assert score[~keep].max() <= score[keep].min()
    random = pc.keep_mask("random", model, scores, 0.3, seed=5)
    assert int(random.sum()) == 140 and torch.equal(random, pc.keep_mask("random", model,
                                                                           scores, 0.3, seed=5))
    small = pc.pruned(model, random)
    assert torch.equal(small.means, model.means.detach()[random])
    with pytest.raises(ValueError, match="rule"):
        pc.keep_mask("size", model, scores, 0.3, seed=0)


@needs_backend
def test_pruning_by_contribution_keeps_more_of_the_fit(tmp_path):
    """A short run (1,000 Gaussians at 48x36, 200 iterations): with 90% of the Gaussians gone,
    the fit pruned by its weight sums keeps a higher held-out PSNR than pruned by opacity, and
    both far above pruned at random, right after pruning and after fine-tuning."""
    out = tmp_path / "prune"
    assert pc.main(["--iterations", "200", "--gaussians", "1000", "--fractions", "0.9",
                    "--finetune", "30", "--width", "48", "--height", "36", "--no-progress",
                    "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())["seeds"]["0"]
    weight_sum, opacity, random = (r[f"{rule} @ 0.9"] for rule in ("weight sum", "opacity",
                                                                     "random"))
    assert weight_sum["kept"] == opacity["kept"] == random["kept"] == 100
    assert weight_sum["pruned"] > opacity["pruned"] + 0.3
    assert weight_sum["tuned"] > opacity["tuned"]
    assert min(weight_sum["pruned"], opacity["pruned"]) > random["pruned"] + 3
    assert r["fit"]["psnr"] > weight_sum["pruned"]
    assert "| 90% |" in (out / "results.md").read_text()
