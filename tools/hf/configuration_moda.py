# Configuration of moda's MoDA (Mixture-of-Depths Attention) / OLMo2-variant models for Hugging Face
# transformers (loaded with trust_remote_code=True). Written by `moda export` next to
# model.safetensors; see docs/checkpoints.md of the moda repository.
try:
    from transformers import PretrainedConfig  # transformers 5 keeps this alias of PreTrainedConfig
except ImportError:  # plain-torch use without transformers (moda's own parity tests)

    class PretrainedConfig:  # type: ignore[no-redef]
        def __init__(self, **kwargs):
            for key, value in kwargs.items():
                setattr(self, key, value)


class ModaConfig(PretrainedConfig):
    model_type = "moda"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=50304,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=None,
        head_dim=None,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_theta=500000.0,
        norm_placement="reordered",  # reordered (OLMo2) | pre | post
        moda=True,  # depth stream on
        moda_ffn_kv=False,  # the MLP input writes a depth slot too
        moda_attn_kv_proj=False,  # the attention slot has its own K/V projections
        tie_word_embeddings=False,
        initializer_range=0.02,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        use_cache=False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = (
            num_attention_heads if num_key_value_heads is None else num_key_value_heads
        )
        self.head_dim = hidden_size // num_attention_heads if head_dim is None else head_dim
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        rope = kwargs.get("rope_parameters")
        if isinstance(rope, dict) and "rope_theta" in rope:
            rope_theta = rope["rope_theta"]
        self.rope_theta = rope_theta
        self.norm_placement = norm_placement
        self.moda = moda
        self.moda_ffn_kv = moda_ffn_kv
        self.moda_attn_kv_proj = moda_attn_kv_proj
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        if norm_placement not in ("reordered", "pre", "post"):
            raise ValueError(f"norm_placement must be reordered, pre or post, not {norm_placement}")
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.tie_word_embeddings = tie_word_embeddings
