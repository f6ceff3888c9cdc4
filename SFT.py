"""Stage 2 of XiaoXin: supervised fine-tuning on conversations of under 512 tokens.

Starts from the pretrained weights in --save_dir; loss on assistant tokens only.
Data: dataset/sft_512.jsonl ({"conversations": [...]}) or the bundled demo data.

    python SFT.py [--init_from out/pretrain.pt] [--resume] ...
"""
import sys

from trainer import run_stage


def main(argv=None) -> int:
    return run_stage("sft", argv)


if __name__ == "__main__":
    sys.exit(main())
