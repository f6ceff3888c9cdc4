"""Chat with a trained XiaoXin checkpoint: interactive, streamed, multi-turn.

    python eval_model.py                          # latest stage in out/, interactive
    python eval_model.py --stage sft --temperature 0 --prompt "你好，介绍一下你自己"
    python eval_model.py --prompts_file prompts.txt > replies.jsonl   # one JSON line per prompt

Interactively, /help (or ?) lists the commands (/clear, /system, /temp, /think, /save, /exit);
no line starting with / reaches the model. History that no longer fits in the model's context is
dropped oldest-first. For a distilled model the <think> part is shown apart from the answer. With
--prompts_file, stdout carries only {"prompt": ..., "reply": ...} lines; everything else goes to stderr.
"""
import argparse
import io
import json
import sys
from pathlib import Path

import torch

import Config
from checkpoint import (UserError, expected_config, find_stage_checkpoint, is_reasoning_stage, load_model,
                        open_tokenizer, resolve_device, run_cli)
from dataset import render_chat


class PromptTooLong(ValueError):
    """The newest message (with the system prompt) does not fit the prompt budget alone."""

    def __init__(self, tokens: int, budget: int, exact: bool):
        super().__init__(f"the newest message takes {'' if exact else 'at least '}{tokens} tokens; {budget} fit")
        self.tokens, self.budget, self.exact = tokens, budget, exact


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
        # The most characters one token can stand for: a text of C characters is at least
        # C / max_token_chars tokens, which lets an over-long message be refused untokenized.
        # (A byte-level token's vocabulary string has one character per byte it stands for, and a
        # character is at least one byte.)
        self.max_token_chars = max(len(t) for t in self.tok.tokenizer.get_vocab(with_added_tokens=True))
        self.generation_prompt_tokens = len(self.tok.encode(render_chat([], add_generation_prompt=True)[0]))

    def prompt_budget(self, max_new_tokens: int) -> int:
        """How many prompt tokens leave room for a reply of max_new_tokens (at most half the context)."""
        return self.max_len - min(max_new_tokens, self.max_len // 2)

    def kept_messages(self, messages, max_new_tokens: int) -> list[dict]:
        """The system prompt (if any) and the newest history that fits the prompt budget, dropping
        the oldest turns two messages at a time (the last drop may take one). Raises PromptTooLong
        when even the newest message (with the system prompt) does not fit.

        Linear in the history it keeps: each message's ChatML block is tokenized once, newest first,
        and the walk stops at the first message that no longer fits. The blocks tokenize
        independently (each starts with the special <|im_start|> and ends with a newline, its own
        token), so their counts add up to the whole prompt's (tested). A block longer than
        max_token_chars × budget characters cannot fit and is never tokenized at all."""
        budget = self.prompt_budget(max_new_tokens)
        system = [m for m in messages[:1] if m["role"] == "system"]
        rest = messages[len(system):]
        head = self.block_tokens(system, budget) + self.generation_prompt_tokens
        room = budget - head
        suffix, fits_from = 0, None           # fits_from: the smallest start index whose suffix fits
        for start in range(len(rest) - 1, -1, -1):
            suffix += self.block_tokens(rest[start:start + 1], room - suffix)
            if suffix > room:
                break
            fits_from = start
        if fits_from is None:
            if not rest and head <= budget:
                return system
            newest = self.block_tokens(rest[-1:], budget)
            exact = all(len(render_chat([m])[0]) <= self.max_token_chars * budget for m in system + rest[-1:])
            raise PromptTooLong(head + newest, budget, exact)
        # The old rule drops pairs from the front: the suffixes tried start at 0, 2, 4, … and, last, n-1.
        n = len(rest)
        start = next(k for k in list(range(0, n - 1, 2)) + [n - 1] if k >= fits_from)
        return system + rest[start:]

    def block_tokens(self, messages, limit: int) -> int:
        """Tokens of these messages' ChatML blocks; when their text is too long to fit in `limit`
        tokens whatever it says, a lower bound above `limit` instead (and nothing is tokenized)."""
        if not messages:
            return 0
        text = render_chat(messages)[0]
        if len(text) > self.max_token_chars * max(limit, 0):
            return -(-len(text) // self.max_token_chars)      # ceil: each token covers ≤ max_token_chars
        return len(self.tok.encode(text))

    def prompt_ids(self, messages, max_new_tokens: int) -> list[int]:
        """Render the conversation, dropping the oldest turns (never the system prompt or the
        newest user message) until the prompt leaves room for a reply."""
        budget = self.prompt_budget(max_new_tokens)
        try:
            kept = self.kept_messages(messages, max_new_tokens)
        except PromptTooLong:
            kept = [m for m in messages[:1] if m["role"] == "system"][:len(messages) - 1] + messages[-1:]
        ids = self.tok.encode(render_chat(kept, add_generation_prompt=True)[0])
        return ids[-budget:]                  # a single over-long message keeps its end

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


TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def held_tag_start(text: str) -> int:
    """How many characters at the end of `text` may be the start of a tag the next piece completes."""
    return max((k for tag in TAGS for k in range(1, len(tag)) if text.endswith(tag[:k])), default=0)


class ThinkPrinter:
    """Prints a streamed reply with one [思考] header where the thinking starts (dimmed on a terminal,
    or hidden with show_think=False) and one [回答] header where the answer starts, however many tags
    a small model emits: later <think>/<answer> tags and every closing tag print nothing, all other
    text prints as it comes. A piece ending in what may be the start of a tag holds that end back
    until the next piece (or finish()) tells. `buffer` keeps the raw reply, tags included."""

    def __init__(self, out=None, show_think: bool = True):
        self.out = sys.stdout if out is None else out
        self.show_think, self.color = show_think, self.out.isatty()
        self.buffer = self.pending = ""
        self.part = None     # None until a header, then "think", "thought" (after </think>) or "answer"

    def write(self, piece: str):
        self.buffer += piece
        text = self.pending + piece
        while found := [(text.find(tag), tag) for tag in TAGS if tag in text]:
            at, tag = min(found)
            self._show(text[:at])
            self._tag(tag)
            text = text[at + len(tag):]
        keep = held_tag_start(text)
        self._show(text[:len(text) - keep])
        self.pending = text[len(text) - keep:]
        self.out.flush()

    def finish(self):
        """Print what was held back (an unfinished tag is text) and end the dimming, also after Ctrl-C."""
        self._show(self.pending)
        self.pending = ""
        if self.part == "think":
            self.out.write(self._dim(False))
        self.out.flush()

    def _tag(self, tag: str):
        if tag == "<think>" and self.part is None:
            self.part = "think"
            self.out.write("\n[思考] " + ("" if self.show_think else "…") + self._dim(True))
        elif tag in ("</think>", "<answer>") and self.part == "think":
            self.part = "thought"
            self.out.write(self._dim(False) + "\n")
        if tag == "<answer>" and self.part != "answer":
            self.part = "answer"
            self.out.write("[回答] ")

    def _show(self, text: str):
        if text and (self.show_think or self.part != "think"):
            self.out.write(text)

    def _dim(self, on: bool) -> str:
        return ("\033[2m" if on else "\033[0m") if self.color and self.show_think else ""


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

    if args.prompt is not None:
        printer = ThinkPrinter()
        messages = system + [{"role": "user", "content": args.prompt}]
        for piece in chat.stream(messages, **seeded_sampling(sampling, args.seed)):
            printer.write(piece)
        printer.finish()
        print()
        return 0
    if args.prompts_file is not None:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise UserError(f"--prompts_file {path} does not exist.")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        from tqdm import tqdm
        for prompt in tqdm(prompts, desc="prompts", file=sys.stderr):
            messages = system + [{"role": "user", "content": prompt}]
            reply = chat.reply(messages, **seeded_sampling(sampling, args.seed))
            print(json.dumps({"prompt": prompt, "reply": reply}, ensure_ascii=False), flush=True)
        return 0

    return ChatSession(chat, checkpoint, sampling, args.system, args.seed).run()


def seeded_sampling(sampling: dict, seed: int | None) -> dict:
    """The sampling flags for one reply; a --seed makes every reply as if it were the first."""
    if seed is not None:
        torch.manual_seed(seed)
    return dict(sampling, seed=seed)


HELP = """commands:
  /help, ?         this list
  /clear           forget the conversation (the system prompt stays)
  /system TEXT     set the system prompt, or remove it with no TEXT; the conversation restarts
  /temp X          set the sampling temperature, X >= 0 (0 = always the likeliest token); no X shows it
  /think on|off    show or hide the model's thinking while it streams
  /save FILE       write the conversation to FILE: JSON if it ends in .json, else markdown
  /exit, /quit     leave (so do Ctrl-D, and Ctrl-C at the prompt)
Ctrl-C during a reply stops that reply. Start a message with // to send it with one leading /."""


class ChatSession:
    """The interactive loop. A line starting with / (or a lone ?) is a command, answered here in one
    or a few lines and never sent to the model."""

    def __init__(self, chat: Chat, checkpoint: Path, sampling: dict, system: str | None = None,
                 seed: int | None = None):
        self.chat, self.checkpoint, self.sampling, self.seed = chat, checkpoint, sampling, seed
        self.system, self.show_think = system or "", True
        self.commands = {"/help": self.help, "?": self.help, "/clear": self.clear, "/system": self.set_system,
                         "/temp": self.set_temperature, "/think": self.set_think, "/save": self.save}
        self.clear()

    def run(self) -> int:
        print("小新 is ready. Type a message; /help lists the commands.", file=sys.stderr)
        while True:
            try:
                text = input("\n你: ").strip()
            except (EOFError, KeyboardInterrupt):
                print()
                return 0
            if text in ("/exit", "/quit"):
                return 0
            if text.startswith("//"):
                self.reply(text[1:])
            elif text.startswith("/") or text == "?":
                print(self.command(text))
            elif text:
                self.reply(text)

    def command(self, text: str) -> str:
        name, arg = (text.split(maxsplit=1) + [""])[:2]
        if name not in self.commands:
            return f"unknown command {name}; /help lists them"
        return self.commands[name](arg.strip())

    def reply(self, text: str):
        self.history.append({"role": "user", "content": text})
        print("小新: ", end="", flush=True)
        printer, interrupted = ThinkPrinter(show_think=self.show_think), False
        try:
            for piece in self.chat.stream(self.history, **seeded_sampling(self.sampling, self.seed)):
                printer.write(piece)
        except KeyboardInterrupt:
            interrupted = True
        printer.finish()
        print(" [interrupted]" if interrupted else "")
        self.history.append({"role": "assistant", "content": printer.buffer or "…"})

    def help(self, arg: str) -> str:
        return HELP

    def clear(self, arg: str = "") -> str:
        self.history = [{"role": "system", "content": self.system}] if self.system else []
        return "conversation cleared"

    def set_system(self, arg: str) -> str:
        self.system = arg
        self.clear()
        return ("system prompt set" if arg else "system prompt removed") + "; the conversation restarts"

    def set_temperature(self, arg: str) -> str:
        if arg:
            try:
                value = float(arg)
            except ValueError:
                value = float("nan")
            if not (0 <= value < float("inf")):
                return f"/temp takes a number >= 0 (0 = always the likeliest token), not {arg}"
            self.sampling["temperature"] = value
        return f"temperature {self.sampling['temperature']:g}"

    def set_think(self, arg: str) -> str:
        if arg not in ("on", "off", ""):
            return f"/think takes on or off, not {arg}"
        if arg:
            self.show_think = arg == "on"
        return "thinking " + ("shown" if self.show_think else "hidden") + \
            ("" if self.chat.reasoning else f" (stage {self.chat.stage} does not think aloud)")

    def save(self, arg: str) -> str:
        if not arg:
            return "/save takes a file name: /save chat.md (markdown) or /save chat.json"
        path = Path(arg).expanduser()
        try:
            path.write_text(self.transcript(as_json=path.suffix.lower() == ".json"), encoding="utf-8")
        except OSError as e:
            return f"cannot write {path}: {e.strerror or e}"
        return f"saved {len(self.history)} messages to {path}"

    def transcript(self, as_json: bool) -> str:
        """The conversation: JSON keeps the raw messages (a reply's tags included, ready to send to
        scripts/serve.py again); markdown shows each reply as the chat printed it."""
        if as_json:
            return json.dumps({"checkpoint": str(self.checkpoint), "stage": self.chat.stage,
                               "sampling": self.sampling, "seed": self.seed, "messages": self.history},
                              ensure_ascii=False, indent=1) + "\n"
        names = {"system": "system prompt", "user": "你", "assistant": "小新"}
        lines = [f"# 小新 chat ({self.checkpoint}, stage {self.chat.stage})"]
        for message in self.history:
            text = message["content"]
            if message["role"] == "assistant":
                printer = ThinkPrinter(io.StringIO())
                printer.write(text)
                printer.finish()
                text = printer.out.getvalue()
            lines += [f"\n## {names[message['role']]}\n", text.strip()]
        return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
