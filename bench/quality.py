"""Answer quality of each weight format against fp32, beside its speed and memory, and its batch-invariance.

    .venv/bin/python bench/quality.py                        # every mode this machine supports
    .venv/bin/python bench/quality.py --modes fp32,nf4 --prompts 8
    .venv/bin/python bench/quality.py --modes fp32,bf16,gguf --llama   # + agreement with llama-server, same GGUF

A fixed prompt set is answered greedily (up to --max-tokens new tokens, stopping at EOS) by the model loaded through
app.inference.loader.load_model in each mode. For each mode it prints: exact-match rate of whole answers with fp32,
token agreement up to the first divergence, one-stream tokens/s, parameter bytes and the loader's memory footprint,
and whether the first 8 prompts give the same greedy answers alone and inside one batch of 8. Writes
bench/results/quality-*.json. See bench/README.md.

With --llama, llama.cpp's llama-server (bench/llama_build.py) answers the same prompts from the same GGUF under greedy
decoding, given the very token ids ClawBot's tokenizer makes, for exactly --llama-tokens tokens each (EOS ignored on
both sides); each mode's answers of the same length are compared with them: token agreement (as above) and the mean
position of the first token that differs.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from app.inference.loader import cpu_has_bf16  # noqa: E402
from app.inference.own_thread import run_in_own_thread  # noqa: E402
from bench.bandwidth import parameter_bytes  # noqa: E402
from bench.raw_generate import QUESTIONS  # noqa: E402
from bench.report import agreement, first_divergence, format_llama_agreement_table, format_quality_table  # noqa: E402
from bench.results_file import write_results  # noqa: E402
from bench.server_process import bench_settings  # noqa: E402

PROMPTS = QUESTIONS + [
    "Translate 'good morning' into Spanish and German.",
    "What is 17 multiplied by 23?",
    "Write a Python function that reverses a string.",
    "List the planets of the solar system in order.",
    "What is the difference between TCP and UDP?",
    "Suggest a name for a friendly robot.",
    "How does a refrigerator keep food cold?",
    "Give me a haiku about the sea.",
    "What causes the seasons on Earth?",
    "Explain recursion to a ten-year-old.",
    "What is a prime number? Give two examples.",
    "Write a polite email declining a meeting invitation.",
    "What are the main ingredients of a pancake?",
    "Describe the water cycle in two sentences.",
    "What does the command `ls -la` do?",
    "Name three benefits of regular exercise.",
]
MODES = ("fp32", "bf16", "int8", "nf4", "gguf")
BATCH = 8


def bitsandbytes_available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def supported_modes() -> list[str]:
    modes = ["fp32", "gguf"]
    if torch.cuda.is_available() or cpu_has_bf16():
        modes.append("bf16")
    if bitsandbytes_available():
        modes += ["int8", "nf4"]
    return modes


def load(mode: str, model_path: str, data_dir: Path) -> Any:
    from transformers.utils import logging as hf_logging

    from app.inference.loader import load_model

    hf_logging.disable_progress_bar()  # one progress bar per mode would bury the figures
    quantization = mode if mode in ("int8", "nf4", "gguf") else "none"
    # fp32 and bf16 name the compute dtype; int8 and nf4 compute in what DTYPE=auto picks, as the server does.
    dtype = {"fp32": "float32", "bf16": "bfloat16"}.get(mode, "auto")
    return load_model(model_path, data_dir, quantization, dtype=dtype, progress=False)


def _trim(ids: list[int], stop_ids: set[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in stop_ids:
            return ids[:i]
    return ids


def answer(loaded: Any, prompts: list[str], max_tokens: int) -> list[list[int]]:
    """Greedy answers (new token ids, cut at EOS) for prompts run together as one left-padded batch."""
    tok = loaded.tokenizer
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    inputs = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(loaded.device)
    with torch.inference_mode():
        out = loaded.model.generate(**inputs, do_sample=False, max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id)
    stop_ids = {tok.eos_token_id, tok.pad_token_id}
    width = inputs["input_ids"].shape[1]
    return [_trim(row[width:].tolist(), stop_ids) for row in out]


def evaluate(loaded: Any, prompts: list[str], max_tokens: int) -> dict[str, Any]:
    """Each prompt alone (timed: one-stream speed), then the first BATCH prompts together."""
    answer(loaded, prompts[:1], 2)  # warm-up
    started = time.perf_counter()
    alone = [answer(loaded, [p], max_tokens)[0] for p in prompts]
    seconds = time.perf_counter() - started
    batched = answer(loaded, prompts[:BATCH], max_tokens)
    same = sum(a == b for a, b in zip(alone[:BATCH], batched))
    return {
        "answers": alone,
        "tokens": sum(len(a) for a in alone),
        "seconds": seconds,
        "tok_s": sum(len(a) for a in alone) / seconds,
        "batch_invariant": f"{same}/{len(batched)}",
    }


def fixed_length_answers(loaded: Any, prompt_ids: list[list[int]], tokens: int) -> list[list[int]]:
    """Greedy answers of exactly `tokens` tokens (EOS ignored), one prompt at a time: what llama-server is asked for."""
    answers = []
    with torch.inference_mode():
        for ids in prompt_ids:
            inputs = torch.tensor([ids], device=loaded.device)
            out = loaded.model.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                do_sample=False,
                min_new_tokens=tokens,
                max_new_tokens=tokens,
                pad_token_id=loaded.tokenizer.pad_token_id,
            )
            answers.append(out[0, len(ids) :].tolist())
    return answers


def prompt_token_ids(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    return [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
        for p in prompts
    ]


def llama_answers(gguf: Path, prompt_ids: list[list[int]], tokens: int, log_path: Path) -> list[list[int]]:
    """llama-server's greedy answers to the same token ids: /completion with top_k 1, EOS ignored, no prompt cache."""
    import httpx

    from bench.llama_build import ensure_llama_server
    from bench.peer import parse_args as peer_args
    from bench.peer import start_llama
    from bench.server_process import stop_server, wait_ready

    threads = str(torch.get_num_threads())  # the same threads as the ClawBot side
    proc, url = start_llama(
        ensure_llama_server(), gguf, peer_args(["--llama-slots", "1", "--llama-threads", threads]), log_path
    )
    try:
        wait_ready(proc, url, log_path, path="/health")
        answers = []
        for ids in prompt_ids:
            body = {
                "prompt": ids,
                "n_predict": tokens,
                "temperature": 0,
                "top_k": 1,
                "ignore_eos": True,
                "cache_prompt": False,
                "return_tokens": True,
            }
            r = httpx.post(url + "/completion", json=body, timeout=600)
            r.raise_for_status()
            answers.append([int(t) for t in r.json()["tokens"]][:tokens])
        return answers
    finally:
        stop_server(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--modes", default=None, help=f"comma-separated subset of {','.join(MODES)} (default: all supported)"
    )
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help=f"how many of the {len(PROMPTS)} prompts")
    parser.add_argument("--max-tokens", type=int, default=48, help="new tokens per answer (greedy, stops at EOS)")
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT / "build" / "bench-data", help="DATA_DIR (model converted once)"
    )
    parser.add_argument(
        "--llama", action="store_true", help="also compare each mode with llama-server on the same GGUF"
    )
    parser.add_argument("--llama-tokens", type=int, default=64, help="tokens per answer in the llama-server comparison")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch (and llama-server) threads; 0 keeps torch's default"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = args.modes.split(",") if args.modes else supported_modes()
    if "fp32" not in modes or any(m not in MODES for m in modes):
        parser.error(f"--modes must include fp32 (the reference) and only {','.join(MODES)}, got {args.modes}")
    if not 1 <= args.prompts <= len(PROMPTS) or args.max_tokens < 1:
        parser.error(
            f"--prompts must be 1..{len(PROMPTS)} and --max-tokens at least 1, got {args.prompts}, {args.max_tokens}"
        )
    prompts = PROMPTS[: args.prompts]
    settings = bench_settings(args.data_dir)
    args.data_dir.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {
        "model": settings.model_path,
        "prompts": len(prompts),
        "max_tokens": args.max_tokens,
        "torch_threads": torch.get_num_threads(),
        "modes": {},
    }
    reference: list[list[int]] = []
    llama: list[list[int]] | None = None
    prompt_ids: list[list[int]] = []
    against_llama: dict[str, dict[str, float]] = {}
    for mode in ["fp32"] + [m for m in modes if m != "fp32"]:
        print(f"{mode}: loading and answering {len(prompts)} prompts ...", flush=True)
        loaded = run_in_own_thread(load, mode, settings.model_path, args.data_dir)
        if args.llama and llama is None:
            from app.inference.loader import locate

            gguf = Path(locate(settings.model_path).path)
            prompt_ids = prompt_token_ids(loaded.tokenizer, prompts)
            print(f"llama-server: {len(prompts)} prompts x {args.llama_tokens} tokens from {gguf.name} ...", flush=True)
            llama = llama_answers(gguf, prompt_ids, args.llama_tokens, args.data_dir / "quality-llama.log")
        if llama is not None:
            ours = run_in_own_thread(fixed_length_answers, loaded, prompt_ids, args.llama_tokens)
            against_llama[mode] = first_divergence(llama, ours)
            print(
                f"  against llama-server: token agreement {against_llama[mode]['token_agreement']:.2f}, "
                f"first divergence at {against_llama[mode]['mean_first_divergence']:.1f} on average",
                flush=True,
            )
        # Off the main thread, as the engine runs the model.
        figures = run_in_own_thread(evaluate, loaded, prompts, args.max_tokens)
        figures["quantization"] = loaded.quantization
        figures["parameter_bytes"] = parameter_bytes(loaded.model)
        figures["memory_bytes"] = loaded.memory_bytes
        del loaded
        gc.collect()
        if mode == "fp32":
            reference = figures["answers"]
        figures.update(agreement(reference, figures["answers"]))
        results["modes"][mode] = figures
        print(
            f"  {figures['tok_s']:.1f} tok/s, exact {figures['exact_match']:.2f}, "
            f"token agreement {figures['token_agreement']:.2f}, batch-invariant {figures['batch_invariant']}",
            flush=True,
        )

    table = format_quality_table(results["modes"])
    results["table"] = table
    print("\n" + table + "\n", flush=True)
    if against_llama:
        results["against_llama"] = against_llama
        results["llama_table"] = format_llama_agreement_table(against_llama, args.llama_tokens)
        print(results["llama_table"] + "\n", flush=True)
    write_results("quality", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
