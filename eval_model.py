"""Chat with a trained XiaoXin checkpoint: interactive, streamed, multi-turn.

    python eval_model.py                          # latest stage in out/, interactive
    python eval_model.py --stage sft --temperature 0 --prompt "你好，介绍一下你自己"
    python eval_model.py --prompts_file prompts.txt > replies.jsonl   # one JSON line per prompt

History that no longer fits in the model's context is dropped oldest-first. For a
distilled model the <think> part is shown apart from the answer. With --prompts_file,
stdout carries only {"prompt": ..., "reply": ...} lines; everything else goes to stderr.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

import Config
from checkpoint import (UserError, expected_config, find_stage_checkpoint, is_reasoning_stage, load_model,
                        open_tokenizer, resolve_device, run_cli)
from dataset import render_chat


class Chat:
    """A loaded model + tokenizer that turns a message list into a streamed reply."""

    def __init__(self, checkpoint: Path, tokenizer_dir, device: str = "auto", dtype: str = "auto",
                 model_name: str | None = None, compile: str = "off"):
        self.tok = open_tokenizer(tokenizer_dir)
        model, ckpt = load_model(checkpoint, expected_config(model_name), self.tok.hash)
        self.device, torch_dtype = resolve_device(device, dtype, training=False)
        self.model = model.to(self.device, torch_dtype).eval()
        if compile == "on" or (compile == "auto" and self.device.type == "cuda"):
            # One fixed-shape decode step under torch.compile: fewer per-token overheads after a
            # one-off compilation (about a minute on CPU, cached on disk for later runs), so
            # auto leaves it off on CPU where a short chat would not win the time back.
            self.model.set_decode_mode("compiled", warn=lambda msg: print(msg, file=sys.stderr))
        self.stage = ckpt.get("stage", "")
        self.reasoning = is_reasoning_stage(self.stage)     # replies are <think>…</think><answer>…</answer>
        self.max_len = model.config.max_seq_len
        self.eos = [self.tok.im_end_id, self.tok.pad_id]

    def prompt_ids(self, messages, max_new_tokens: int) -> list[int]:
        """Render the conversation, dropping the oldest turns (never the system prompt or the
        newest user message) until the prompt leaves room for a reply."""
        budget = self.max_len - min(max_new_tokens, self.max_len // 2)
        system = [m for m in messages[:1] if m["role"] == "system"]
        rest = messages[len(system):]
        while True:
            ids = self.tok.encode(render_chat(system + rest, add_generation_prompt=True)[0])
            if len(ids) <= budget or len(rest) <= 1:
                return ids[-budget:]          # a single over-long message keeps its end
            rest = rest[2:] if len(rest) > 2 else rest[-1:]

    def stream(self, messages, max_new_tokens=Config.GENERATION["max_new_tokens"], **sampling):
        """Yield text pieces as they are decoded; the final <|im_end|> is not yielded."""
        yield from self.stream_ids(self.prompt_ids(messages, max_new_tokens), max_new_tokens, **sampling)

    def stream_ids(self, ids, max_new_tokens=Config.GENERATION["max_new_tokens"], seed=None, stats=None,
                   stopped=None, **sampling):
        """The decoding loop on prompt ids; `sampling` (temperature, top_p, top_k,
        repetition_penalty) defaults to Config.GENERATION's. `stats`, if given, gets completion_tokens and
        finish_reason ("stop" at <|im_end|>, else "length"); `stopped()` is asked before each
        token is kept, so a reply nobody waits for ends early."""
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        x = torch.tensor([ids], device=self.device)
        out, printed = [], ""
        for token in self.model.generate(x, max_new_tokens, eos_token_id=self.eos, generator=generator, **sampling):
            if token in self.eos:
                if stats is not None:
                    stats.finish_reason = "stop"
                break
            if stopped is not None and stopped():
                return
            out.append(token)
            if stats is not None:
                stats.completion_tokens = len(out)
            text = self.tok.decode(out)
            if text.endswith("\ufffd"):
                continue  # half of a multi-byte character: wait for the rest
            yield text[len(printed):]
            printed = text
        text = self.tok.decode(out)
        if len(text) > len(printed):
            yield text[len(printed):]

    def reply(self, messages, **sampling) -> str:
        return "".join(self.stream(messages, **sampling))


class ThinkPrinter:
    """Prints a streamed reply, showing <think> content dimmed under a label."""

    def __init__(self, out=sys.stdout):
        self.out, self.buffer, self.color = out, "", out.isatty()

    def write(self, piece: str):
        self.buffer += piece
        piece = piece.replace("<think>", "\n[思考] " + ("\033[2m" if self.color else ""))
        piece = piece.replace("</think>", ("\033[0m" if self.color else "") + "\n")
        piece = piece.replace("<answer>", "[回答] ").replace("</answer>", "")
        self.out.write(piece)
        self.out.flush()


def add_checkpoint_args(p):
    """The flags that pick and load a checkpoint (shared with scripts/serve.py)."""
    p.add_argument("--stage", choices=list(Config.STAGES), default=None, help="default: the latest stage present")
    p.add_argument("--model", default=None, help="expected model size (checked against the checkpoint)")
    p.add_argument("--save_dir", default="out")
    p.add_argument("--tokenizer_dir", default="XiaoXin_tokenizer")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                   help="compile the per-token decode step: auto = on CUDA only (notes/LOG.md)")


def open_chat(args) -> tuple["Chat", Path]:
    """Find the stage checkpoint and load it (checked against --model); raises UserError with one sentence."""
    checkpoint = find_stage_checkpoint(args.save_dir, args.stage)
    return Chat(checkpoint, args.tokenizer_dir, args.device, args.dtype, args.model, args.compile), checkpoint


def parse_args(argv):
    g = Config.GENERATION
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    p.add_argument("--temperature", type=float, default=g["temperature"])
    p.add_argument("--top_p", type=float, default=g["top_p"])
    p.add_argument("--top_k", type=int, default=g["top_k"])
    p.add_argument("--max_new_tokens", type=int, default=g["max_new_tokens"])
    p.add_argument("--repetition_penalty", type=float, default=g["repetition_penalty"])
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--system", default=None, help="optional system prompt")
    p.add_argument("--prompt", default=None, help="answer this one prompt and exit")
    p.add_argument("--prompts_file", default=None, help="answer each line; print one JSON line per prompt")
    return p.parse_args(argv)


def main(argv=None) -> int:
    return run_cli(parse_args, chat_main, argv)


def chat_main(args) -> int:
    if args.temperature < 0 or not (0 < args.top_p <= 1) or args.repetition_penalty <= 0 or args.max_new_tokens < 1:
        raise UserError("--temperature must be ≥ 0, --top_p in (0, 1], --repetition_penalty > 0 and "
                        "--max_new_tokens ≥ 1.")
    chat, checkpoint = open_chat(args)
    sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                    top_k=args.top_k, repetition_penalty=args.repetition_penalty)
    system = [{"role": "system", "content": args.system}] if args.system else []
    print(f"loaded {checkpoint} (stage {chat.stage}) on {chat.device}", file=sys.stderr)

    def seeded():
        if args.seed is not None:
            torch.manual_seed(args.seed)
        return dict(sampling, seed=args.seed)

    if args.prompt is not None:
        printer = ThinkPrinter()
        for piece in chat.stream(system + [{"role": "user", "content": args.prompt}], **seeded()):
            printer.write(piece)
        print()
        return 0
    if args.prompts_file is not None:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise UserError(f"--prompts_file {path} does not exist.")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        from tqdm import tqdm
        for prompt in tqdm(prompts, desc="prompts", file=sys.stderr):
            reply = chat.reply(system + [{"role": "user", "content": prompt}], **seeded())
            print(json.dumps({"prompt": prompt, "reply": reply}, ensure_ascii=False), flush=True)
        return 0

    print("小新 is ready. Type a message; /clear forgets the history, /exit quits.", file=sys.stderr)
    history = list(system)
    while True:
        try:
            text = input("\n你: ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/clear":
            history = list(system)
            continue
        history.append({"role": "user", "content": text})
        print("小新: ", end="", flush=True)
        printer = ThinkPrinter()
        try:
            for piece in chat.stream(history, **seeded()):
                printer.write(piece)
        except KeyboardInterrupt:
            print(" [interrupted]")
        print()
        history.append({"role": "assistant", "content": printer.buffer or "…"})


if __name__ == "__main__":
    sys.exit(main())
