"""Stage 3 of XiaoXin: fine-tuning on 512–1024-token conversations.

Starts from the SFT weights in --save_dir (or pretraining's when SFT was skipped).
Data: dataset/sft_1024.jsonl or the bundled demo data.

    python SFT_long.py [--resume] ...
"""
import sys

from trainer import run_stage


def main(argv=None) -> int:
    return run_stage("sft_long", argv)


if __name__ == "__main__":
    sys.exit(main())
