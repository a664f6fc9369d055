"""Vision-language prefill (issue 18): puyu against transformers on SmolVLM-256M's shapes, with random weights.

No vision-language weights can be downloaded here, so the model is an Idefics3 at SmolVLM-256M-Instruct's published
shapes (SigLIP 768 x 12 layers at 512 px, patch 16, pixel shuffle 4: 64 tokens per tile; Llama 576 x 30 layers,
vocabulary 49280) with random weights, saved with transformers' own processor (images up to 2048 px, 512-px tiles)
and the built-in model's tokenizer plus the image tokens.  Speed does not depend on the weights' values.

For a 384x384 and a 1024x768 image, the time to the first token of one question (preprocessing, the vision tower
over every tile, the prompt's prefill and one token), best of ``--repeats``: puyu's generator against transformers'
``generate(max_new_tokens=1)`` on the same prompt, and the ratio transformers / puyu (above 1: puyu is faster), in
float32 and, where puyu's ``dtype auto`` picks bf16 (CPUs with AMX), in bf16 for both; the last lines compare each
at its default (puyu ``auto``, transformers float32), what a user gets without flags.
Then puyu's engine asks a second question about the same image: its KV blocks come from the prefix cache, so only
the new question is prefilled.  Prints the CPU flags.

    .venv/bin/python bench/vlm.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.decode import best_time  # noqa: E402
from puyu.engine import EngineConfig, LLMEngine  # noqa: E402
from puyu.eval.backends import model_folder  # noqa: E402
from puyu.generation import SamplingParams, generate  # noqa: E402
from puyu.hardware import describe_machine, resolve_dtype  # noqa: E402
from puyu.model import load_model  # noqa: E402
from puyu.model.vlm.prompt import ImageInput  # noqa: E402
from tests.model.vlm.conftest import SPECIAL, photo  # noqa: E402  (the image tokens and photo-like test images)

VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=512, patch_size=16)
TEXT = dict(vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
PROMPT = "<|im_start|>User:<image>What is in this picture?<end_of_utterance>\nAssistant:"
SECOND = "<|im_start|>User:<image>Which colours does it have?<end_of_utterance>\nAssistant:"
SIZES = [(384, 384), (1024, 768)]


def build(folder: Path):
    """Save the random SmolVLM-256M-shaped model and its processor in ``folder``; return (model, processor)."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        PreTrainedTokenizerFast,
    )

    tok = PreTrainedTokenizerFast.from_pretrained(model_folder("smollm2-135m-instruct"))
    tok.add_special_tokens({"additional_special_tokens": SPECIAL}, replace_extra_special_tokens=False)
    config = Idefics3Config(vision_config=VISION, text_config=dict(model_type="llama", **TEXT), scale_factor=4,
                            image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    images = Idefics3ImageProcessorPil(size={"longest_edge": 2048}, max_image_size={"longest_edge": 512})
    processor = Idefics3Processor(images, tok, image_seq_len=64)
    processor.save_pretrained(folder)
    return model, processor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(describe_machine())
    auto = resolve_dtype("auto", torch.device("cpu"))
    dtypes = [torch.float32] + ([auto] if auto != torch.float32 else [])
    print(f"puyu's dtype auto on this CPU: {str(auto).removeprefix('torch.')}; transformers loads float32 by default")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        theirs, processor = build(folder)
        one = SamplingParams(temperature=0, max_new_tokens=1)
        print(f"{'dtype':>9} {'image':>10} {'tiles':>5} {'tokens':>6} {'puyu s':>7} {'transformers s':>14} {'ratio':>6} "
              f"{'2nd question s':>14} {'blocks reused':>13}")
        fp32_theirs: dict = {}
        defaults: dict = {}
        for dtype in dtypes:
            model, tokenizer = load_model(folder, dtype=dtype, device="cpu")
            theirs = theirs.to(dtype)
            image_input = model.image_input
            for width, height in SIZES:
                picture = photo(width, height, seed=width)

                def ours(text=PROMPT):  # a fresh ImageInput: no image vectors kept from an earlier run
                    ids, images = ImageInput(image_input.vlm, image_input.processor).prepare(text, [picture], tokenizer)
                    return generate(model, tokenizer, [ids], one, [images]), ids, images

                def transformers_run():
                    inputs = processor(text=PROMPT, images=[[picture]], return_tensors="pt")
                    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
                    with torch.inference_mode():
                        theirs.generate(**inputs, max_new_tokens=1, do_sample=False)

                ours()
                ours_s, theirs_s = best_time(ours, args.repeats), best_time(transformers_run, args.repeats)
                fp32_theirs.setdefault((width, height), theirs_s)
                engine = LLMEngine(model, tokenizer, EngineConfig(num_blocks=256))  # one ImageInput for both, as a server has
                ids, images = image_input.prepare(PROMPT, [picture], tokenizer)
                engine.generate([ids], one, images=[images])
                ids2, images2 = image_input.prepare(SECOND, [picture], tokenizer)
                hits = engine.stats()["prefix_cache_hit_blocks"]
                second = best_time(lambda: engine.generate([ids2], one, images=[images2]), 1)
                reused = engine.stats()["prefix_cache_hit_blocks"] - hits
                name = str(dtype).removeprefix("torch.")
                print(f"{name:>9} {width}x{height:<5} {images.pixels.shape[0]:>5} {len(ids):>6} {ours_s:>7.2f} {theirs_s:>14.2f} "
                      f"{theirs_s / ours_s:>6.2f} {second:>14.2f} {reused:>13}")
                if dtype == auto:
                    defaults[(width, height)] = ours_s
        for (width, height), ours_s in defaults.items():
            print(f"defaults (puyu dtype auto, transformers float32) {width}x{height}: "
                  f"ratio {fp32_theirs[(width, height)] / ours_s:.2f}")


if __name__ == "__main__":
    main()
