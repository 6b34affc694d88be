"""GRPO loss math against hand-computed values, the policy-gradient sign, and the Liger fused path
against the plain PyTorch path (same loss and gradients on a tiny Qwen2)."""
import math

import pytest
import torch

from opgrpo_fast.train.config import LossConfig
from opgrpo_fast.train.loss import HAVE_LIGER, Normalizer, compute_loss, grpo_loss_torch, k3, set_loss_backend
from opgrpo_fast.train.model import PolicyHead

L15, L05 = math.log(1.5), math.log(0.5)


def _case():
    # 2 sequences × 3 tokens; the last token of sequence 1 is padding
    old = torch.zeros(2, 3)
    logp = torch.tensor([[L15, L05, 0.0], [L15, L05, 0.0]])
    ref = torch.tensor([[0.1, -0.2, 0.0], [0.0, 0.3, 5.0]])
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logp, old, ref, adv, mask


def _hand(beta, clamp=10.0):
    """Per-token losses written out by hand (ε = 0.2)."""
    # A=+1: r=1.5 → min(1.5, 1.2) = 1.2 (clipped) ; r=0.5 → min(0.5, 0.8) = 0.5 ; r=1 → 1
    # A=-1: r=1.5 → min(-1.5, -1.2) = -1.5 ; r=0.5 → min(-0.5, -0.8) = -0.8 (clipped) ; r=1 → -1
    pg = [[-1.2, -0.5, -1.0], [1.5, 0.8, 1.0]]
    logp, _, ref, _, _ = _case()

    def kl(r, lp):
        d = r - lp
        return min(math.exp(d) - d - 1, clamp)

    return [[pg[i][j] + beta * kl(float(ref[i, j]), float(logp[i, j])) for j in range(3)] for i in range(2)]


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_loss_matches_hand_computed_values(beta):
    logp, old, ref, adv, mask = _case()
    tok = _hand(beta)
    m = mask.tolist()
    expected = {
        "token-mean": sum(tok[i][j] for i in range(2) for j in range(3) if m[i][j]) / 5,
        "seq-mean-token-mean": (sum(tok[0]) / 3 + sum(tok[1][:2]) / 2) / 2,
        "seq-mean-token-sum": (sum(tok[0]) + sum(tok[1][:2])) / 2,
    }
    for mode, want in expected.items():
        cfg = LossConfig(beta=beta, loss_type=mode)
        loss, sums = grpo_loss_torch(logp, old, ref, adv, mask, cfg, Normalizer(5, 2, 1))
        assert loss.item() == pytest.approx(want, abs=1e-6), mode
        assert sums["clipped"].item() == 2  # (A>0, r=1.5) and (A<0, r=0.5)


def test_k3_is_kl_estimator_and_clamped():
    lp = torch.tensor([-1.0, -2.0])
    assert torch.allclose(k3(lp, lp, 10.0), torch.zeros(2))  # same policy → 0
    big = k3(torch.tensor([5.0]), torch.tensor([0.0]), 10.0)  # e^5 - 6 ≈ 142 → clamped
    assert big.item() == 10.0
    assert k3(torch.tensor([5.0]), torch.tensor([0.0]), None).item() == pytest.approx(math.exp(5) - 6)
    assert k3(torch.tensor([0.5]), torch.tensor([0.0]), 10.0).item() == pytest.approx(math.exp(0.5) - 1.5)


def test_token_mean_splits_over_micro_batches_and_ranks():
    """Σ of micro-batch losses = the mini-batch loss; with W ranks each holding half, the average of
    the ranks' losses (what DDP does to gradients) = the global token mean."""
    torch.manual_seed(0)
    logp, adv = torch.randn(4, 5), torch.randn(4)
    mask = (torch.rand(4, 5) > 0.3).long()
    cfg = LossConfig(beta=0.0)
    n = float(mask.sum())
    full, _ = grpo_loss_torch(logp, None, None, adv, mask, cfg, Normalizer(n, 4, 1))
    halves = [grpo_loss_torch(logp[s], None, None, adv[s], mask[s], cfg, Normalizer(n, 2, 2))[0]
              for s in (slice(0, 2), slice(2, 4))]
    assert (sum(halves) / 2).item() == pytest.approx(full.item(), abs=1e-6)
    for mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
        cfg = LossConfig(beta=0.0, loss_type=mode)
        full, _ = grpo_loss_torch(logp, None, None, adv, mask, cfg, Normalizer(n, 4, 1))
        parts = [grpo_loss_torch(logp[s], None, None, adv[s], mask[s], cfg, Normalizer(n, 4, 1))[0]
                 for s in (slice(0, 2), slice(2, 4))]
        assert sum(parts).item() == pytest.approx(full.item(), abs=1e-6)


def test_policy_gradient_sign():
    """A gradient step raises the log-prob of tokens with positive advantage, lowers negative ones."""
    logits = torch.zeros(2, 3, 7, requires_grad=True)
    ids = torch.tensor([[1, 2, 3], [1, 2, 3]])
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 3, dtype=torch.long)

    def logp_of(lg):
        return torch.log_softmax(lg, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)

    loss, _ = grpo_loss_torch(logp_of(logits), None, None, adv, mask, LossConfig(beta=0.0), Normalizer(6, 2))
    loss.backward()
    with torch.no_grad():
        after = logp_of(logits - 1.0 * logits.grad)
        before = logp_of(logits)
    assert (after[0] > before[0]).all() and (after[1] < before[1]).all()


def _tiny_policy(seed=0):
    from opgrpo_fast.tiny import tiny_qwen2_config
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_qwen2_config(64, hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64)
    cfg._attn_implementation = "sdpa"
    return PolicyHead(Qwen2ForCausalLM(cfg))


def _micro_batch(seed=1, b=4, p=5, c=6, vocab=64):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, p + c), generator=g)
    attn = torch.ones(b, p + c, dtype=torch.long)
    attn[0, :2] = 0  # left padding
    cmask = torch.ones(b, c, dtype=torch.long)
    cmask[1, 3:] = 0  # EOS early
    attn[:, p:] = cmask
    return {"input_ids": ids, "attention_mask": attn, "completion_ids": ids[:, p:], "completion_mask": cmask,
            "advantages": torch.randn(b, generator=g)}


@pytest.mark.skipif(not HAVE_LIGER, reason="liger-kernel not installed")
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("off_policy", [False, True])
def test_liger_matches_torch(mode, off_policy):
    cfg = LossConfig(beta=0.04, loss_type=mode)
    results = {}
    for backend in ("torch", "liger"):
        head = _tiny_policy()
        mb = _micro_batch()
        c = mb["completion_ids"].shape[1]
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            from opgrpo_fast.train.loss import token_logprobs

            base = token_logprobs(head(mb["input_ids"], mb["attention_mask"], c, want_logits=True),
                                  mb["completion_ids"])
        mb["ref_logp"] = base + 0.3 * torch.randn(base.shape, generator=g)
        mb["ref_logp"][2, 1] = base[2, 1] + 4.0  # k3 > 10 here: the ±10 clamp must apply on both paths
        # off-policy: old log-probs far enough that some ratios fall outside [0.8, 1.2]
        mb["old_logp"] = base + 0.5 * torch.randn(base.shape, generator=g) if off_policy else None
        loss, sums = compute_loss(head, head.lm.lm_head, mb, cfg, Normalizer(float(mb["completion_mask"].sum()) * 2,
                                                                               8, 1), 0.9, backend)
        loss.backward()
        results[backend] = (loss.detach(), sums, {n: p.grad.clone() for n, p in head.named_parameters()})
    (lt, st, gt), (ll, sl, gl) = results["torch"], results["liger"]
    assert torch.allclose(lt, ll, atol=1e-5, rtol=1e-5), (lt, ll)
    assert torch.allclose(st["kl"], sl["kl"], atol=1e-4, rtol=1e-5)
    assert torch.allclose(st["clipped"], sl["clipped"])
    if off_policy:
        assert st["clipped"] > 0
    for n in gt:
        assert torch.allclose(gt[n], gl[n], atol=1e-5, rtol=1e-4), n


def test_backend_switch():
    with pytest.raises(ValueError, match="liger' or 'torch"):
        set_loss_backend("triton")
