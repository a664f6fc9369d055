"""Hub configs that leave out default values read as transformers reads them."""

from __future__ import annotations

from transformers import Idefics3Config, InternVLConfig, LlavaConfig

from puyu.model.vlm import VLMConfig

# llava-hf/llava-1.5-7b-hf's config.json (transformers 4.36 era): the text config states no shape, Vicuna-7B's is
# LlamaConfig's default; the vision config states CLIP ViT-L/14-336's.
LLAVA_15_7B = {
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000, "model_type": "llava",
    "pad_token_id": 32001, "projector_hidden_act": "gelu", "tie_word_embeddings": False, "vocab_size": 32064,
    "text_config": {"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
                    "torch_dtype": "float16", "vocab_size": 32064},
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
                      "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
}


def _same_shapes(ours: VLMConfig, theirs) -> None:
    t, v = theirs.text_config, theirs.vision_config
    assert (ours.text.vocab_size, ours.text.hidden_size, ours.text.intermediate_size, ours.text.num_layers, ours.text.num_heads,
            ours.text.num_kv_heads, ours.text.rms_norm_eps) == (t.vocab_size, t.hidden_size, t.intermediate_size, t.num_hidden_layers,
                                                                t.num_attention_heads, t.num_key_value_heads, t.rms_norm_eps)
    size = v.image_size if isinstance(v.image_size, int) else v.image_size[0]
    patch = v.patch_size if isinstance(v.patch_size, int) else v.patch_size[0]
    assert (ours.vision.hidden_size, ours.vision.intermediate_size, ours.vision.num_layers, ours.vision.num_heads, ours.vision.image_size,
            ours.vision.patch_size, ours.vision.layer_norm_eps, ours.vision.hidden_act) == (
        v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads, size, patch, v.layer_norm_eps, v.hidden_act)
    assert ours.image_token_id == theirs.image_token_id
    assert ours.text.tie_word_embeddings == theirs.tie_word_embeddings


def test_the_published_llava_15_config_reads_as_the_7b_model():
    ours = VLMConfig.from_hf(LLAVA_15_7B)
    _same_shapes(ours, LlavaConfig(**LLAVA_15_7B))
    assert (ours.text.hidden_size, ours.text.num_layers, ours.tokens_per_tile, ours.layers_used) == (4096, 32, 576, 23)


def test_sub_configs_that_state_only_their_type_take_the_type_defaults():
    cases = [(LlavaConfig, "LlavaForConditionalGeneration", "llama", {"model_type": "clip_vision_model"}),
             (InternVLConfig, "InternVLForConditionalGeneration", "qwen2", {"model_type": "internvl_vision"}),
             # Idefics3's default 224/32 grid (7x7) cannot be pixel-shuffled by 2; SmolVLM's tiles and patches can
             (Idefics3Config, "Idefics3ForConditionalGeneration", "llama", {"model_type": "idefics3_vision", "image_size": 512,
                                                                            "patch_size": 16})]
    for cls, architecture, text_type, vision in cases:
        minimal = {"architectures": [architecture], "text_config": {"model_type": text_type}, "vision_config": vision}
        _same_shapes(VLMConfig.from_hf(minimal), cls(**minimal))
