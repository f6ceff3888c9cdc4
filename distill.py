"""Stage 4 of XiaoXin: DeepSeek-R1 distillation.

The assistant text is <think>…</think><answer>…</answer>, so the model learns to reason
before it answers. Starts from SFT_long's weights (or SFT's). Data: dataset/r1_mix_1024.jsonl
or the bundled demo data.

    python distill.py [--resume] ...
"""
import sys

from trainer import run_stage


def main(argv=None) -> int:
    return run_stage("distill", argv)


if __name__ == "__main__":
    sys.exit(main())
