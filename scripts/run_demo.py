"""The whole XiaoXin pipeline in one command: every stage of Config.STAGES in order, then chat.

    python scripts/run_demo.py                  # demo data when the real files are absent
    python scripts/run_demo.py --model tiny --max_steps 5     # any flag is passed to every stage

Runs the stage scripts (pretrain → SFT → SFT_long → distill) in order with the same flags
(so they chain through the same --save_dir), prints each stage's final losses and wall time,
then asks the first chat model (after SFT) and the final one a few questions, greedily.
"""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLE_PROMPTS = ["你好，请介绍一下你自己。", "为什么天空是蓝色的？", "请把“我喜欢读书”翻译成英文。",
                  "小明有15个苹果，送给朋友6个，又买了8个，现在有几个？"]


def flag_value(argv, name, default):
    return argv[argv.index(name) + 1] if name in argv else default


def main(argv=None) -> int:
    import json

    import Config
    from eval_model import Chat
    from trainer import run_script
    argv = list(sys.argv[1:] if argv is None else argv)
    save_dir = Path(flag_value(argv, "--save_dir", "out"))
    timings = {}
    for stage in Config.STAGES:
        print(f"\n===== {stage} =====", flush=True)
        t = time.perf_counter()
        code = run_script(stage, argv)
        timings[stage] = time.perf_counter() - t
        if code:
            print(f"{stage} failed (exit {code}); stopping the pipeline.", file=sys.stderr)
            return code
    print("\n===== results =====")
    for stage, seconds in timings.items():
        r = json.loads((save_dir / f"{stage}.json").read_text())["results"]
        val = f"{r['final_val_loss']:.3f}" if r.get("final_val_loss") is not None else "n/a"
        print(f"{stage:9s} train loss {r['final_train_loss']:.3f}  validation loss {val}  {seconds:6.0f} s")
    print(f"total {sum(timings.values()):.0f} s")
    tokenizer_dir = flag_value(argv, "--tokenizer_dir", str(ROOT / "XiaoXin_tokenizer"))
    chat_stages = [s for s, entry in Config.STAGES.items() if entry.data_kind == "sft"][:1] + list(Config.STAGES)[-1:]
    for stage in dict.fromkeys(chat_stages):
        chat = Chat(save_dir / f"{stage}.pt", tokenizer_dir, device="cpu", dtype="float32")
        print(f"\n----- answers after {stage} (greedy) -----")
        for prompt in SAMPLE_PROMPTS:
            reply = chat.reply([{"role": "user", "content": prompt}], max_new_tokens=160, temperature=0,
                               repetition_penalty=1.2)
            print(f"Q: {prompt}\nA: {reply}\n", flush=True)
    print("Chat with it: python eval_model.py" + (f" --save_dir {save_dir}" if str(save_dir) != "out" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
