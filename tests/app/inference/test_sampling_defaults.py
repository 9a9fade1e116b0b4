"""Sampling defaults: what model.generate() would use per the model's generation_config.json, or the embedded
model's own settings."""

from __future__ import annotations

from transformers import GenerationConfig

from app.inference.loader import EMBEDDED_SAMPLING, SamplingDefaults, sampling_defaults


def test_a_sampling_generation_config_is_followed() -> None:
    qwen_like = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, repetition_penalty=1.05)
    assert sampling_defaults(qwen_like) == SamplingDefaults(0.7, 0.8, 1.05, "generation_config.json")


def test_without_do_sample_generate_is_greedy() -> None:
    got = sampling_defaults(GenerationConfig(temperature=0.6))
    assert (got.temperature, got.top_p, got.repetition_penalty) == (0.0, 1.0, 1.0)
    assert sampling_defaults(None).temperature == 0.0


def test_the_embedded_model_uses_its_own_settings_with_a_repetition_guard() -> None:
    got = sampling_defaults(GenerationConfig(), "smollm2-135m-instruct")
    assert got is EMBEDDED_SAMPLING["smollm2-135m-instruct"]
    assert got.temperature == 0.0 and got.top_p == 0.9 and got.repetition_penalty > 1.0
