"""llama.cpp vs transformers on the same GGUF file, side by side in one run: load time and tokens/s.

    python bench/llm_backends.py                          # Qwen2.5-Coder-0.5B Q4_K_M, 64 tokens
    python bench/llm_backends.py --model qwen2.5-coder-1.5b --tokens 32 --threads 2

Both backends get the same prompt text (the GGUF's chat template, rendered once), the
same thread count (default: half the cores, llama.cpp's own default; on a shared machine
more threads than free cores make llama.cpp's spinning threads far slower) and greedy
decoding. transformers de-quantizes the GGUF to float32
on load (``from_pretrained(dir, gguf_file=...)``); llama.cpp runs the Q4_K_M weights
as they are. For each backend: load time (file → ready), time to the first token
(prompt prefill), and decode tokens/s over the remaining tokens. The last line prints
the headline ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.chat.llamacpp import LlamaCppChatModel, resolve_gguf  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a long, detailed story about a robot who learns to paint."}]


def run_llamacpp(path: Path, tokens: int, threads: int) -> tuple[dict[str, float], str]:
    """llama.cpp's figures, and the prompt text (the GGUF's chat template applied to PROMPT) for the other side."""
    t0 = time.perf_counter()
    chat = LlamaCppChatModel(model=str(path), n_threads=threads, n_ctx=1024).load()
    load = time.perf_counter() - t0
    llama = chat.llama
    prompt = chat.template.apply_chat_template(PROMPT, add_generation_prompt=True)
    ids = llama.tokenize(prompt.encode(), add_bos=False, special=True)
    ban_eos = {llama.token_eos(): -1e9}  # exactly `tokens` tokens, like min_new_tokens below

    def generate(n: int) -> float:
        llama.reset()  # no KV-cache reuse between the timed calls: each one prefills the prompt
        t = time.perf_counter()
        out = llama.create_completion(ids, max_tokens=n, temperature=0.0, logit_bias=ban_eos)
        assert out["usage"]["completion_tokens"] == n, out["usage"]
        return time.perf_counter() - t

    generate(1)  # warm-up
    first = generate(1)
    total = generate(tokens)
    figures = {"load_s": load, "first_token_s": first, "decode_tok_s": (tokens - 1) / (total - first), "total_s": total}
    return figures, prompt


def run_transformers(path: Path, prompt: str, tokens: int, threads: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    net = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True).eval()
    load = time.perf_counter() - t0
    inputs = tok(prompt, return_tensors="pt", add_special_tokens=False)

    def generate(n: int) -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            out = net.generate(
                **inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id
            )
        assert out.shape[1] - inputs["input_ids"].shape[1] == n
        return time.perf_counter() - t

    generate(1)
    first = generate(1)
    total = generate(tokens)
    return {"load_s": load, "first_token_s": first, "decode_tok_s": (tokens - 1) / (total - first), "total_s": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b", help="a llamacpp preset or a .gguf path")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="both backends")
    args = parser.parse_args()

    path = resolve_gguf(args.model)
    print(f"{path.name} ({path.stat().st_size / 1e6:.0f} MB), {args.tokens} tokens, {args.threads} threads, greedy")
    results: dict[str, dict[str, float]] = {}
    results["llama.cpp"], prompt = run_llamacpp(path, args.tokens, args.threads)
    print(f"  llama.cpp    {results['llama.cpp']}", flush=True)
    results["transformers"] = run_transformers(path, prompt, args.tokens, args.threads)
    print(f"  transformers {results['transformers']}")
    print(f"{'backend':>13} {'load s':>8} {'1st token s':>12} {'decode tok/s':>13} {f'{args.tokens} tok s':>10}")
    for name, r in results.items():
        print(
            f"{name:>13} {r['load_s']:8.1f} {r['first_token_s']:12.2f} {r['decode_tok_s']:13.1f} {r['total_s']:10.1f}"
        )
    lc, hf = results["llama.cpp"], results["transformers"]
    print(
        f"headline: llama.cpp decodes {lc['decode_tok_s'] / hf['decode_tok_s']:.1f}x faster "
        f"({lc['decode_tok_s']:.1f} vs {hf['decode_tok_s']:.1f} tok/s) and loads "
        f"{hf['load_s'] / lc['load_s']:.0f}x faster "
        f"({lc['load_s']:.1f} vs {hf['load_s']:.1f} s) than transformers on {path.name}"
    )


if __name__ == "__main__":
    main()
