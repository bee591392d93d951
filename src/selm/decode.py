"""A lean decoding loop for small Llama checkpoints on the CPU, bit-identical to transformers' `generate`.

At the toy scale (113k parameters) a decoding step is mostly Python: transformers' `generate` and the
Llama modules spend about two thirds of each step in wrappers, hooks and per-module dispatch, not in
arithmetic. `lean_generate` runs the same tensor operations in the same order on the same weights
(embedding, RMSNorm, rotary embedding, q/k/v projections, SDPA with the same boolean mask, MLP, tied
head), keeps the key/value cache as transformers' DynamicCache does (concatenation along the
sequence), and picks tokens as `generate` does (float32 copy of the last logits, temperature and top-p
warpers, softmax + one `torch.multinomial` draw per step from the global generator, or argmax;
finished rows get the pad token). So its token ids equal `generate`'s bit for bit, which
tests/test_decode.py checks against `generate` itself, greedy and sampled, with left padding.

`supports(model, ...)` says when that equivalence is known to hold: a float32 LlamaForCausalLM with SDPA
attention on the CPU, default RoPE, no biases, SiLU, as many key/value heads as query heads, and a
generation config that adds no logits processor of its own. Anything else (GQA models such as
SmolLM2, CUDA, bf16, other architectures) goes through `generate` unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Generation-config fields that would make `generate` add a logits processor or stopping rule that
# the lean loop does not apply, with the value that leaves them off.
NEUTRAL_GENERATION = {
    "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "min_length": (None, 0),
    "min_new_tokens": (None, 0), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,), "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0), "min_p": (None,), "renormalize_logits": (None, False), "watermarking_config": (None,),
    "guidance_scale": (None, 1.0), "low_memory": (None, False), "stop_strings": (None,), "max_time": (None,),
    "num_beams": (None, 1), "num_beam_groups": (None, 1), "penalty_alpha": (None,), "assistant_model": (None,),
    "prompt_lookup_num_tokens": (None,), "output_scores": (None, False), "output_logits": (None, False),
}


def supports(model, top_k: int | None = 0) -> bool:
    """Whether `lean_generate` is bit-identical to `model.generate` for this model (see the module doc).
    `top_k`: what the caller passes to `generate` when sampling (None: the generation config's, and
    transformers' default of 50 where that is unset too); the lean loop applies no top-k, so only an
    effective 0 (off) qualifies."""
    config = getattr(model, "config", None)
    if config is None or type(model).__name__ != "LlamaForCausalLM":
        return False
    if (model.generation_config.top_k if top_k is None else top_k) != 0:
        return False
    rope = getattr(config, "rope_parameters", None) or {}
    if (config._attn_implementation != "sdpa" or rope.get("rope_type", "default") != "default"
            or config.attention_bias or config.mlp_bias or config.hidden_act != "silu"
            or getattr(config, "pretraining_tp", 1) != 1 or config.num_key_value_heads != config.num_attention_heads):
        return False
    if model.device.type != "cpu" or any(p.dtype != torch.float32 for p in model.parameters()):
        return False
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if any(type(m) is not torch.nn.Linear for m in linears) or type(model.lm_head) is not torch.nn.Linear:
        return False  # a replaced or wrapped layer (LoRA, quantised) computes something else
    if getattr(model, "hf_quantizer", None) is not None or model.model.rotary_emb.attention_scaling != 1.0:
        return False
    gen = model.generation_config
    return all(getattr(gen, key, None) in allowed for key, allowed in NEUTRAL_GENERATION.items())


def _linear(x: torch.Tensor, layer) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)  # what nn.Linear.forward computes


def _rms_norm(x: torch.Tensor, norm) -> torch.Tensor:
    dtype = x.dtype
    x = x.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + norm.variance_epsilon)
    return norm.weight * x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _mask(padding: torch.Tensor, past: int, length: int) -> torch.Tensor:
    """(batch, 1, length, past + length) boolean: query i (at position past + i) sees key j when j <= past + i
    and key j is not padding; what transformers builds for SDPA from a 2D padding mask."""
    keys = torch.arange(past + length)
    causal = keys[None, :] <= (torch.arange(length) + past)[:, None]
    return causal[None, None, :, :] & padding.bool()[:, None, None, :]


class _Llama:
    """The forward pass of a LlamaForCausalLM (as `supports` accepts), with a list as its KV cache."""

    def __init__(self, model):
        self.model, inner = model, model.model
        self.embed, self.layers, self.norm, self.rotary = inner.embed_tokens, inner.layers, inner.norm, inner.rotary_emb
        self.head = model.lm_head
        self.head_dim = self.layers[0].self_attn.head_dim
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, input_ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """Logits of every position of `input_ids`, after the cached ones; `padding` covers cache + input."""
        batch, length = input_ids.shape
        past = self.cache[0][0].shape[2] if self.cache else 0
        x = F.embedding(input_ids, self.embed.weight, self.embed.padding_idx)
        positions = (torch.arange(length) + past).unsqueeze(0)
        cos, sin = self.rotary(x, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        # As transformers: without padding, no mask (SDPA's is_causal for a prompt, nothing for one new token).
        unpadded = (length == 1 or past == 0) and bool(padding.all())
        mask, causal = (None, length > 1) if unpadded else (_mask(padding, past, length), False)
        shape = (batch, length, -1, self.head_dim)
        for i, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            h = _rms_norm(x, layer.input_layernorm)
            q = _linear(h, attn.q_proj).view(shape).transpose(1, 2)
            k = _linear(h, attn.k_proj).view(shape).transpose(1, 2)
            v = _linear(h, attn.v_proj).view(shape).transpose(1, 2)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
            if len(self.cache) > i:
                k = torch.cat([self.cache[i][0], k], dim=-2)
                v = torch.cat([self.cache[i][1], v], dim=-2)
                self.cache[i] = (k, v)
            else:
                self.cache.append((k, v))
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=attn.scaling, is_causal=causal)
            o = o.reshape(o.shape[0], -1, length, v.shape[-1]).transpose(1, 2).contiguous()
            o = _linear(o.reshape(batch, length, -1).contiguous(), attn.o_proj)
            x = x + o
            h = _rms_norm(x, layer.post_attention_layernorm)
            h = _linear(F.silu(_linear(h, mlp.gate_proj)) * _linear(h, mlp.up_proj), mlp.down_proj)
            x = x + h
        return _linear(_rms_norm(x, self.norm), self.head)


def generate(model, *, input_ids: torch.Tensor, attention_mask: torch.Tensor, top_k: int | None = None, **settings):
    """`model.generate(input_ids=..., attention_mask=..., top_k=..., **settings)`, through `lean_generate`
    when `supports(model, top_k)` (the same ids, faster), else through `model.generate` itself."""
    if supports(model, top_k if settings.get("do_sample") else 0):
        return lean_generate(model, input_ids, attention_mask, **settings)
    if top_k is not None:
        settings["top_k"] = top_k
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)


@torch.no_grad()
def lean_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                  eos_token_id: int, pad_token_id: int, do_sample: bool, temperature: float = 1.0,
                  top_p: float = 1.0, num_return_sequences: int = 1) -> torch.Tensor:
    """`model.generate(...)` with these arguments (top_k=0 when sampling): prompt + generated ids."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    warpers = []
    if do_sample and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if do_sample and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    if num_return_sequences > 1:
        input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
        attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
    forward = _Llama(model)
    max_length = input_ids.shape[1] + max_new_tokens
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.long)
    logits = forward(input_ids, attention_mask)
    while True:
        scores = logits[:, -1].to(copy=True, dtype=torch.float32)
        for warp in warpers:
            scores = warp(input_ids, scores)
        if do_sample:
            next_tokens = torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            next_tokens = torch.argmax(scores, dim=-1)
        next_tokens = next_tokens * unfinished + pad_token_id * (1 - unfinished)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        unfinished = unfinished & ~(next_tokens == eos_token_id)
        if input_ids.shape[1] >= max_length or unfinished.max() == 0:
            return input_ids
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=-1)
        logits = forward(next_tokens[:, None], attention_mask)
