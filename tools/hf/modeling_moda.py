# MoDA (Mixture-of-Depths Attention) and OLMo2-variant models exported by `moda export`, for Hugging
# Face transformers (AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)) and so for
# lm-evaluation-harness. Self-contained: torch (+ transformers for the HF wrapper) only.
#
# The forward is moda's (design.md section 3 of the moda repository; src/model/model.cpp):
# - x0 = E[token]; no position embedding.
# - attention: q, k, v = x Wq, x Wk, x Wv; QK-norm = RMSNorm over the whole q (Hq*d) and the whole
#   k (Hk*d) with learned weights, then RoPE per head (rotate_half pairing, theta); GQA.
# - depth stream (MoDA): each token owns an ordered list of (key, value) slots of Hk heads x d.
#   Slot order: attention slot of layer 0, FFN slot of layer 0 (with moda_ffn_kv), attention slot
#   of layer 1, ... Layer l reads slots [0, 2l) (moda_ffn_kv) or [0, l) and the last layer writes
#   none. The attention slot is the layer's own (normed, rotated) k, v, or with
#   moda_attn_kv_proj its own projections (depth_k_proj / depth_v_proj, depth_k_norm, RoPE). The
#   FFN slot is k_f = RoPE(RMSNorm(h Wk_f)), v_f = h Wv_f from the MLP's input h.
# - reads: query head h of token t attends under ONE softmax to the causal sequence keys 0..t of
#   kv head h // G and to the depth slots of token t for that kv head, scale 1/sqrt(d).
# - MLP: SwiGLU, down(silu(gate(h)) * up(h)).
# - norm placement: reordered (OLMo2): h = x + N(Attn(x)), x' = h + N(MLP(h)), final norm;
#   pre: h = x + Attn(N(x)), x' = h + MLP(N(h)), final norm; post: h = N(x + Attn(x)),
#   x' = N(h + MLP(h)), no final norm.
# There is no KV cache: generation recomputes the whole sequence at every step.
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

try:
    from .configuration_moda import ModaConfig
except ImportError:  # imported as a top-level module (moda's parity tests)
    from configuration_moda import ModaConfig

try:
    from transformers import PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutputWithPast

    try:
        from transformers import GenerationMixin
    except ImportError:
        GenerationMixin = object
    _HAVE_TRANSFORMERS = True
except ImportError:  # plain torch
    PreTrainedModel = nn.Module
    GenerationMixin = object
    CausalLMOutputWithPast = None
    _HAVE_TRANSFORMERS = False


class ModaRMSNorm(nn.Module):
    def __init__(self, width, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * x).to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_tables(positions, head_dim, theta, dtype):
    # positions [B, T] -> cos, sin [B, T, 1, d] (computed in float64, as moda's tables are).
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[..., None] * inv_freq
    emb = torch.cat((angles, angles), dim=-1)[:, :, None, :]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    # x [B, T, H, d]
    return x * cos + rotate_half(x) * sin


class ModaAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.hq = config.num_attention_heads
        self.hk = config.num_key_value_heads
        self.d = config.head_dim
        D = config.hidden_size
        self.q_proj = nn.Linear(D, self.hq * self.d, bias=False)
        self.k_proj = nn.Linear(D, self.hk * self.d, bias=False)
        self.v_proj = nn.Linear(D, self.hk * self.d, bias=False)
        self.o_proj = nn.Linear(self.hq * self.d, D, bias=False)
        self.q_norm = ModaRMSNorm(self.hq * self.d, config.rms_norm_eps)
        self.k_norm = ModaRMSNorm(self.hk * self.d, config.rms_norm_eps)
        last = layer + 1 == config.num_hidden_layers
        self.own_slot_proj = bool(config.moda and config.moda_attn_kv_proj and not last)
        if self.own_slot_proj:
            self.depth_k_proj = nn.Linear(D, self.hk * self.d, bias=False)
            self.depth_v_proj = nn.Linear(D, self.hk * self.d, bias=False)
            self.depth_k_norm = ModaRMSNorm(self.hk * self.d, config.rms_norm_eps)

    def forward(self, x, cos, sin, depth_k, depth_v, key_mask):
        """x [B, T, D]; depth_k/v: lists of [B, T, Hk, d] slots this layer reads; key_mask
        [B, 1, T, T] additive (causal + padding). Returns (output, (slot_k, slot_v))."""
        B, T, _ = x.shape
        q = apply_rope(self.q_norm(self.q_proj(x)).view(B, T, self.hq, self.d), cos, sin)
        k = apply_rope(self.k_norm(self.k_proj(x)).view(B, T, self.hk, self.d), cos, sin)
        v = self.v_proj(x).view(B, T, self.hk, self.d)
        if self.own_slot_proj:
            sk = apply_rope(self.depth_k_norm(self.depth_k_proj(x)).view(B, T, self.hk, self.d), cos, sin)
            slot = (sk, self.depth_v_proj(x).view(B, T, self.hk, self.d))
        else:
            slot = (k, v)
        G = self.hq // self.hk
        scale = 1.0 / math.sqrt(self.d)
        qh = q.permute(0, 2, 1, 3).float()  # [B, Hq, T, d]
        kh = k.permute(0, 2, 1, 3).repeat_interleave(G, dim=1).float()
        vh = v.permute(0, 2, 1, 3).repeat_interleave(G, dim=1).float()
        scores = torch.matmul(qh, kh.transpose(-1, -2)) * scale + key_mask  # [B, Hq, T, T]
        if depth_k:
            dk = torch.stack(depth_k, dim=2).repeat_interleave(G, dim=3).float()  # [B, T, S, Hq, d]
            dv = torch.stack(depth_v, dim=2).repeat_interleave(G, dim=3).float()
            depth_scores = torch.einsum("bhtd,btshd->bhts", qh, dk) * scale  # [B, Hq, T, S]
            probs = torch.softmax(torch.cat((scores, depth_scores), dim=-1), dim=-1)
            out = torch.matmul(probs[..., :T], vh) + torch.einsum("bhts,btshd->bhtd", probs[..., T:], dv)
        else:
            out = torch.matmul(torch.softmax(scores, dim=-1), vh)
        out = out.to(x.dtype).permute(0, 2, 1, 3).reshape(B, T, self.hq * self.d)
        return self.o_proj(out), slot


class ModaMLP(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        D, Fh = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(D, Fh, bias=False)
        self.up_proj = nn.Linear(D, Fh, bias=False)
        self.down_proj = nn.Linear(Fh, D, bias=False)
        last = layer + 1 == config.num_hidden_layers
        self.hk, self.d = config.num_key_value_heads, config.head_dim
        self.writes_slot = bool(config.moda and config.moda_ffn_kv and not last)
        if self.writes_slot:
            self.depth_k_proj = nn.Linear(D, self.hk * self.d, bias=False)
            self.depth_v_proj = nn.Linear(D, self.hk * self.d, bias=False)
            self.depth_k_norm = ModaRMSNorm(self.hk * self.d, config.rms_norm_eps)

    def forward(self, h, cos, sin):
        out = self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))
        slot = None
        if self.writes_slot:
            B, T, _ = h.shape
            k = apply_rope(self.depth_k_norm(self.depth_k_proj(h)).view(B, T, self.hk, self.d), cos, sin)
            slot = (k, self.depth_v_proj(h).view(B, T, self.hk, self.d))
        return out, slot


class ModaDecoderLayer(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.placement = config.norm_placement
        self.self_attn = ModaAttention(config, layer)
        self.mlp = ModaMLP(config, layer)
        D, eps = config.hidden_size, config.rms_norm_eps
        if self.placement == "pre":
            self.input_layernorm = ModaRMSNorm(D, eps)
            self.pre_feedforward_layernorm = ModaRMSNorm(D, eps)
        else:
            self.post_attention_layernorm = ModaRMSNorm(D, eps)
            self.post_feedforward_layernorm = ModaRMSNorm(D, eps)

    def forward(self, x, cos, sin, depth_k, depth_v, key_mask):
        if self.placement == "pre":
            a, attn_slot = self.self_attn(self.input_layernorm(x), cos, sin, depth_k, depth_v, key_mask)
            h = x + a
            m, ffn_slot = self.mlp(self.pre_feedforward_layernorm(h), cos, sin)
            return h + m, attn_slot, ffn_slot
        a, attn_slot = self.self_attn(x, cos, sin, depth_k, depth_v, key_mask)
        if self.placement == "reordered":
            h = x + self.post_attention_layernorm(a)
        else:
            h = self.post_attention_layernorm(x + a)
        m, ffn_slot = self.mlp(h, cos, sin)
        if self.placement == "reordered":
            return h + self.post_feedforward_layernorm(m), attn_slot, ffn_slot
        return self.post_feedforward_layernorm(h + m), attn_slot, ffn_slot


class ModaPreTrainedModel(PreTrainedModel):
    if _HAVE_TRANSFORMERS:
        config_class = ModaConfig
        base_model_prefix = "model"
        _no_split_modules = ["ModaDecoderLayer"]
        supports_gradient_checkpointing = False

        def _init_weights(self, module):
            std = self.config.initializer_range
            if isinstance(module, nn.Linear):
                module.weight.data.normal_(mean=0.0, std=std)
            elif isinstance(module, nn.Embedding):
                module.weight.data.normal_(mean=0.0, std=std)
            elif isinstance(module, ModaRMSNorm):
                module.weight.data.fill_(1.0)

    def __init__(self, config):
        if _HAVE_TRANSFORMERS:
            super().__init__(config)
        else:
            super().__init__()
            self.config = config


class ModaModel(ModaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(ModaDecoderLayer(config, l) for l in range(config.num_hidden_layers))
        if config.norm_placement != "post":
            self.norm = ModaRMSNorm(config.hidden_size, config.rms_norm_eps)
        if _HAVE_TRANSFORMERS:
            self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None):
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = x.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=x.device)[None, :].expand(B, T)
        cos, sin = rope_tables(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        # Additive mask over sequence keys: causal, and padded keys (attention_mask 0) excluded.
        # A large finite negative, so that a padded query (ignored by the caller) never yields NaN.
        neg = torch.finfo(torch.float32).min / 2
        allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, None]
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, :].bool()
        key_mask = torch.zeros(allowed.shape, dtype=torch.float32, device=x.device).masked_fill(~allowed, neg)
        depth_k, depth_v = [], []
        moda, ffn_kv = self.config.moda, self.config.moda_ffn_kv
        for layer in self.layers:
            x, attn_slot, ffn_slot = layer(x, cos, sin, depth_k if moda else [], depth_v if moda else [], key_mask)
            if moda:
                depth_k.append(attn_slot[0])
                depth_v.append(attn_slot[1])
                if ffn_kv and ffn_slot is not None:
                    depth_k.append(ffn_slot[0])
                    depth_v.append(ffn_slot[1])
        if self.config.norm_placement != "post":
            x = self.norm(x)
        return x


class ModaForCausalLM(ModaPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.model = ModaModel(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if _HAVE_TRANSFORMERS:
            self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return None if self.config.tie_word_embeddings else self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values=None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        logits_to_keep=0,
        **kwargs,
    ):
        hidden = self.model(input_ids, attention_mask, position_ids, inputs_embeds)
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:, :]
        weight = self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight
        logits = F.linear(hidden, weight)
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1, :].float().reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(shift_logits.device)
            loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
        if CausalLMOutputWithPast is None:
            return logits if loss is None else (loss, logits)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=None)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        # No KV cache: every step sees the whole sequence.
        return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}

    def _supports_default_dynamic_cache(self):
        return False


__all__ = ["ModaConfig", "ModaForCausalLM", "ModaModel", "ModaPreTrainedModel"]
