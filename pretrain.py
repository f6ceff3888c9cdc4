"""Stage 1 of XiaoXin: next-token pretraining on {"text": ...} jsonl.

Trains from scratch on MiniMind's pretrain_hq.jsonl (put it at dataset/pretrain_hq.jsonl),
or on the bundled demo data when that file is absent. Documents are packed into full rows.

    python pretrain.py [--model default] [--epochs 1] [--batch_size 32] [--resume] ...
    torchrun --nproc_per_node 4 pretrain.py
"""
import sys

from trainer import run_stage


def main(argv=None) -> int:
    return run_stage("pretrain", argv)


if __name__ == "__main__":
    sys.exit(main())
