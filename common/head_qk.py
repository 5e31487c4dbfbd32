"""One attention head's QK circuit, kept factored (:class:`FactoredQK`).

* **Scaling and biases.** The spectral objects (:meth:`FactoredQK.sym_eig`, singular values,
  norms, steering edits) use the **weights only**: no 1/sqrt(d_head), no b_Q/b_K.
  :meth:`FactoredQK.scorer` returns the same head with ``(x_q W_Q + b_Q)(x_k W_K + b_K)^T /
  sqrt(d_head)``, i.e. the model's real attention logits on position-free inputs (TransformerLens
  with ``fold_ln`` folds LN1's weight into W_Q/W_K and its bias into b_Q/b_K, so LN-normalised
  inputs are exactly what the head reads). A steering edit applied to a scorer changes only its
  bilinear part; the bias cross-terms stay as they are. Orientation and factored algebra:
  :mod:`common.factored`.

Check against the published numbers: on the real gpt2-small attention weights (../shared/gpt2),
:meth:`FactoredQK.from_gpt2_state_dict` (LN folded as TransformerLens does) gives for L1H5, in the
residual basis with weights only, 33 negative eigenvalues among the 64 largest and largest
singular values 1.861 (W_sym) and 1.347 (W_skew): the post's 33 of 64, 1.86 and 1.34.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from common.factored import DEFAULT_EIG_RTOL, Eigen, Factored, spectrum_summary, steer


@dataclass
class FactoredQK:
    """One head's QK circuit from W_Q, W_K [d_model, d_head] and optional b_Q, b_K [d_head].

    See the module docstring for conventions: :meth:`weights` is W_QK = W_Q W_K^T (no scaling, no
    biases; used for spectra and edits); :meth:`scorer` adds biases and 1/sqrt(d_head) to give the
    model's attention logits. Build it from a model (:meth:`from_model`), from a GPT-2 state dict
    such as ../shared/gpt2 (:meth:`from_gpt2_state_dict`), or from raw tensors.
    """

    W_Q: torch.Tensor
    W_K: torch.Tensor
    b_Q: torch.Tensor | None = None
    b_K: torch.Tensor | None = None
    attn_scale: float | None = None  # default sqrt(d_head)
    layer: int | None = None
    head: int | None = None
    _eig_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.W_Q = torch.as_tensor(self.W_Q).detach().float()
        self.W_K = torch.as_tensor(self.W_K).detach().float()
        if self.W_Q.shape != self.W_K.shape or self.W_Q.dim() != 2:
            raise ValueError(f"W_Q {tuple(self.W_Q.shape)} and W_K {tuple(self.W_K.shape)} must be equal [d_model, d_head]")
        for name in ("b_Q", "b_K"):
            b = getattr(self, name)
            if b is not None:
                b = torch.as_tensor(b).detach().float()
                if b.shape != (self.d_head,):
                    raise ValueError(f"{name} has shape {tuple(b.shape)}, expected ({self.d_head},)")
                setattr(self, name, b)
        if self.attn_scale is None:
            self.attn_scale = math.sqrt(self.d_head)

    @property
    def d_model(self) -> int:
        return self.W_Q.shape[0]

    @property
    def d_head(self) -> int:
        return self.W_Q.shape[1]

    @classmethod
    def from_model(cls, model, layer: int, head: int) -> "FactoredQK":
        """The processed (fold_ln) weights of ``model``'s head; includes b_Q, b_K and attn_scale."""
        scale = float(model.cfg.attn_scale) if getattr(model.cfg, "use_attn_scale", True) else 1.0
        if getattr(model.cfg, "scale_attn_by_inverse_layer_idx", False):
            scale *= layer + 1
        return cls(
            model.W_Q[layer, head].detach().cpu(), model.W_K[layer, head].detach().cpu(),
            model.b_Q[layer, head].detach().cpu(), model.b_K[layer, head].detach().cpu(),
            attn_scale=scale, layer=layer, head=head,
        )

    @classmethod
    def from_gpt2_state_dict(cls, sd: dict, layer: int, head: int, n_heads: int = 12,
                             fold_ln: bool = True) -> "FactoredQK":
        """From Hugging Face GPT-2 tensors (Conv1D [in, out] layout, e.g. ../shared/gpt2).

        With ``fold_ln`` (default), LN1's weight is folded into W_Q/W_K, its bias into b_Q/b_K,
        and W_Q/W_K are centred over d_model, exactly as TransformerLens' ``fold_ln`` does, so
        the result matches ``from_model`` on the processed model.
        """
        sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
        w = torch.as_tensor(sd[f"h.{layer}.attn.c_attn.weight"]).float()
        b = torch.as_tensor(sd[f"h.{layer}.attn.c_attn.bias"]).float()
        d = w.shape[0]
        dh = d // n_heads
        if not 0 <= head < n_heads:
            raise ValueError(f"head {head} out of range 0..{n_heads - 1}")
        sl_q = slice(head * dh, (head + 1) * dh)
        sl_k = slice(d + head * dh, d + (head + 1) * dh)
        W_Q, W_K, b_Q, b_K = w[:, sl_q], w[:, sl_k], b[sl_q], b[sl_k]
        if fold_ln:
            g = torch.as_tensor(sd[f"h.{layer}.ln_1.weight"]).float()
            beta = torch.as_tensor(sd[f"h.{layer}.ln_1.bias"]).float()
            b_Q, b_K = b_Q + beta @ W_Q, b_K + beta @ W_K
            W_Q, W_K = g[:, None] * W_Q, g[:, None] * W_K
            W_Q, W_K = W_Q - W_Q.mean(0, keepdim=True), W_K - W_K.mean(0, keepdim=True)
        return cls(W_Q, W_K, b_Q, b_K, layer=layer, head=head)

    def weights(self) -> Factored:
        """W_QK = W_Q W_K^T: weights only, no 1/sqrt(d_head), no biases."""
        return Factored(self.W_Q, self.W_K)

    def scorer(self, biases: bool = True, scaled: bool = True) -> Factored:
        """(x_q W_Q + b_Q)(x_k W_K + b_K)^T / attn_scale: the model's attention logits."""
        c = 1.0 / self.attn_scale if scaled else 1.0
        zero = torch.zeros(self.d_head)
        if not biases:
            return Factored(self.W_Q, self.W_K * c)
        bq = self.b_Q if self.b_Q is not None else zero
        bk = self.b_K if self.b_K is not None else zero
        return Factored(self.W_Q, self.W_K * c, bq, bk * c)

    # -- spectra (weights only) --------------------------------------------------------------
    def sym(self) -> Factored:
        return self.weights().sym()

    def skew(self) -> Factored:
        return self.weights().skew()

    def sym_eig(self, rtol: float = DEFAULT_EIG_RTOL) -> Eigen:
        if rtol not in self._eig_cache:
            self._eig_cache[rtol] = self.weights().sym_eig(rtol)
        return self._eig_cache[rtol]

    def spectrum_summary(self, top: int = 64, rtol: float = DEFAULT_EIG_RTOL) -> dict:
        return spectrum_summary(self.weights(), top=top, rtol=rtol)

    # -- steering ----------------------------------------------------------------------------
    def steer(self, alpha: float, which: str | int = "negative", keep_skew: bool = True,
              biases: bool = False, scaled: bool = False, rtol: float = DEFAULT_EIG_RTOL) -> Factored:
        """See :func:`steer`; ``biases``/``scaled`` choose the base form (as in :meth:`scorer`)."""
        base = self.scorer(biases=biases, scaled=scaled)
        c = 1.0 / self.attn_scale if scaled else 1.0
        return steer(base, alpha, which, keep_skew, eig=self.sym_eig(rtol), eig_scale=c)
