"""XiaoXin configuration: the one place to edit hyperparameters.

`LLMConfig` describes a model's shape (field names follow HuggingFace's `LlamaConfig`
so export is a direct mapping). `MODELS` holds the named sizes chosen with `--model`.
`STAGES` is the stage registry: for each training stage, in pipeline order, its data,
the stages it starts from, its objective, its defaults (`train`; command-line flags
override them for one run, e.g. `python pretrain.py --batch_size 16 --learning_rate 3e-4`)
and its demo profile (`demo`, used when the real dataset is absent and the bundled demo
data under data/demo/ is trained instead). Every list of stages in the code comes from it:
adding a stage is one entry here and a script of a few lines (see trainer.py).
`GENERATION` holds the sampling defaults of everything that generates text.
"""
from dataclasses import dataclass, asdict, replace


@dataclass
class LLMConfig:
    vocab_size: int = 6400
    hidden_size: int = 512
    intermediate_size: int = 1408      # SwiGLU width, ≈ 8/3 × hidden rounded to a multiple of 64
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 2       # grouped-query attention: 4 query heads share one K/V head
    max_seq_len: int = 1024            # ↔ LlamaConfig.max_position_embeddings
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of num_key_value_heads {self.num_key_value_heads}.")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        return asdict(self)


MODELS = {
    # ~1.2M parameters: CPU smoke runs and the test suite.
    "tiny": LLMConfig(hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2),
    # ~5.9M parameters: the demo profile's model, trains the demo corpus on a laptop CPU in minutes.
    "small": LLMConfig(hidden_size=256, intermediate_size=704, num_hidden_layers=6,
                       num_attention_heads=8, num_key_value_heads=2),
    # ~25.8M parameters: the XiaoXin model ("千万参数").
    "default": LLMConfig(),
    # ~106M parameters: for users with more compute and data.
    "large": LLMConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=16,
                       num_attention_heads=12, num_key_value_heads=4),
}


def model_config(name: str) -> LLMConfig:
    if name not in MODELS:
        raise ValueError(f"--model {name!r} is unknown; choose one of: {', '.join(MODELS)}.")
    return replace(MODELS[name])


@dataclass
class TrainConfig:
    """Defaults for one training stage. Every field is also a command-line flag."""
    data_path: str = ""
    val_path: str = ""
    init_from: str = ""                 # "" = the first of the stage's starts_from found in --save_dir
    model: str = "default"
    save_dir: str = "out"
    log_dir: str = "log"
    plot_dir: str = ""                  # "" = <save_dir>/plots (assets/ changes only by scripts/report.py --publish)
    cache_dir: str = ""                 # "" = <save_dir>/cache
    epochs: int = 1
    batch_size: int = 32                # sequences per micro-batch; --batch_size auto: the largest that fits
    learning_rate: float = 5e-4
    min_lr_ratio: float = 0.1           # cosine decays to learning_rate × this
    weight_decay: float = 0.1
    accumulation_steps: int = 8
    max_seq_len: int = 512
    device: str = "auto"
    dtype: str = "auto"                 # auto = bfloat16 where supported, else float16 on CUDA / float32
    compile: str = "auto"
    warmup_iters: int = 100
    grad_clip: float = 1.0
    log_step: int = 50
    save_step: int = 500
    eval_step: int = 0                  # 0 = validate at the end of every epoch only
    keep_checkpoints: int = 2
    max_steps: int = 0                  # 0 = run all epochs
    seed: int = 1337
    tokenize_workers: int = 0           # processes building a token cache (0 = all cores, 1 on ≤ 2 cores; dataset.build_token_cache)
    skip_bad_lines: bool = False
    max_bad_steps: int = 10             # stop after this many non-finite steps in a row
    tracker: str = "swanlab"            # swanlab | none
    tokenizer_dir: str = "XiaoXin_tokenizer"
    optimizer: str = "adamw"            # adamw | muon (Muon on the 2-D hidden matrices, AdamW on the rest)
    reasoning_problems: int = 0         # add this many generated reasoning problems (scripts/gen_reasoning.py,
                                        # seeded by --seed, never a held-out question) to the training data
    stage: str = ""                     # set from the STAGES key; not a flag
    auto_batch_size: bool = False       # set by --batch_size auto (trainer.Trainer.choose_batch_size); not a flag


@dataclass
class GRPOConfig(TrainConfig):
    """The GRPO stage's own flags (grpo.py says why each default is what it is). --batch_size is
    the rows (prompt + completion) per forward/backward micro-batch; --accumulation_steps is unused."""
    prompts_per_step: int = 32          # prompts per rollout on each rank (the global list is this × ranks)
    group_size: int = 8                 # completions sampled per prompt (G)
    max_new_tokens: int = 512           # per completion, also for validation
    temperature: float = 1.0            # rollouts sample the full softmax at this temperature
    correct_reward: float = 1.0         # reward for a correct final answer (grader.py)
    format_reward: float = 0.1          # reward for a well-formed <think>…</think><answer>…</answer>
    scale_by_std: bool = False          # divide advantages by the group's std (GRPO) instead of only centring (Dr. GRPO)
    clip_low: float = 0.2               # ratio clipped to [1 - clip_low, 1 + clip_high] (PPO)
    clip_high: float = 0.28             # DAPO's clip-higher
    kl_coef: float = 0.0                # weight of the k3 KL to the starting model (measured anyway)
    grpo_iterations: int = 1            # optimiser steps per rollout (μ); 1 = on-policy
    num_prompts: int = 20000            # curriculum prompts per epoch (without --data_path)
    val_problems: int = 200             # held-out problems of --val_path for validation (0 = none)


@dataclass
class Stage:
    """One training stage: everything the rest of the code needs to know about it."""
    script: str                # the script that runs it (`python <script>`), named in messages
    log_name: str              # log/<log_name>.log and log/<log_name>_steps.jsonl
    data_kind: str             # its jsonl: "pretrain" ({"text"}), "sft" ({"conversations"}) or "problems" (grpo.py)
    starts_from: tuple         # earlier stages whose weights it starts from, first found in --save_dir wins
    loss: str                  # "module.function" of its objective (losses.py says what one looks like)
    about: str                 # what its checkpoint is, for the exported model card
    train: TrainConfig         # its defaults; flags override them for one run
    demo: dict                 # applied on top of `train` when train.data_path is absent (explicit flags still win)
    reasoning: bool = False    # replies are <think>…</think><answer>…</answer>; chat and serving show the parts apart


# The embedded default (each stage's `demo`) is sized so the whole pipeline and its report card finish
# in about fifteen minutes on two CPU cores (twenty with GRPO): a short pass over the demo prose, then
# most of the budget on the reasoning curriculum, where learning can be measured on held-out problems.
STAGES = {   # in pipeline order; the last stage present is the one eval_model.py chats with by default
    "pretrain": Stage(
        script="pretrain.py", log_name="Pretrain", data_kind="pretrain", starts_from=(),
        loss="losses.cross_entropy",
        about="pretrained base model (next-token prediction on plain text; not a chat model)",
        train=TrainConfig(data_path="dataset/pretrain_hq.jsonl", epochs=1, batch_size=32, learning_rate=5e-4,
                          accumulation_steps=8, max_seq_len=512, warmup_iters=200),
        demo=dict(data_path="data/demo/pretrain.jsonl", val_path="data/demo/pretrain_val.jsonl", model="small",
                  epochs=2, batch_size=8, accumulation_steps=1, learning_rate=3e-3, optimizer="muon", max_seq_len=256,
                  warmup_iters=20, log_step=20, save_step=200)),
    "sft": Stage(
        script="SFT.py", log_name="SFT", data_kind="sft", starts_from=("pretrain",),
        loss="losses.cross_entropy",
        about="chat model after supervised fine-tuning on conversations",
        train=TrainConfig(data_path="dataset/sft_512.jsonl", epochs=2, batch_size=32, learning_rate=2e-4,
                          accumulation_steps=2, max_seq_len=512, warmup_iters=100),
        demo=dict(data_path="data/demo/sft_512.jsonl", val_path="data/demo/sft_512_val.jsonl", model="small",
                  epochs=6, batch_size=8, accumulation_steps=1, learning_rate=2e-3, optimizer="muon", max_seq_len=512,
                  warmup_iters=20, log_step=20, save_step=200)),
    "sft_long": Stage(
        script="SFT_long.py", log_name="SFT_long", data_kind="sft", starts_from=("sft", "pretrain"),
        loss="losses.cross_entropy",
        about="chat model after supervised fine-tuning on long conversations",
        train=TrainConfig(data_path="dataset/sft_1024.jsonl", epochs=1, batch_size=16, learning_rate=1e-4,
                          accumulation_steps=4, max_seq_len=1024, warmup_iters=50),
        demo=dict(data_path="data/demo/sft_1024.jsonl", val_path="data/demo/sft_1024_val.jsonl", model="small",
                  epochs=1, batch_size=4, accumulation_steps=1, learning_rate=1e-3, optimizer="muon", max_seq_len=1024,
                  warmup_iters=10, log_step=20, save_step=200)),
    "distill": Stage(
        script="distill.py", log_name="distill", data_kind="sft", starts_from=("sft_long", "sft", "pretrain"),
        loss="losses.cross_entropy", reasoning=True,
        about="reasoning chat model distilled from R1-style traces (`<think>…</think><answer>…</answer>`)",
        train=TrainConfig(data_path="dataset/r1_mix_1024.jsonl", epochs=1, batch_size=16, learning_rate=1e-4,
                          accumulation_steps=4, max_seq_len=1024, warmup_iters=50),
        # Demo: the hand-written R1 records plus 20,000 generated problems (a fresh curriculum under the
        # cache dir; never a held-out question), 900 steps of Muon: where the CPU budget buys measurable
        # reasoning (notes/LOG.md, 2026-12-07).
        demo=dict(data_path="data/demo/r1_mix_1024.jsonl", val_path="data/demo/r1_mix_1024_val.jsonl",
                  reasoning_problems=20000, model="small", epochs=1, max_steps=900, batch_size=16,
                  accumulation_steps=1, learning_rate=4e-3, optimizer="muon", max_seq_len=384, warmup_iters=50,
                  log_step=50, save_step=300, compile="off")),
    "grpo": Stage(
        script="grpo.py", log_name="grpo", data_kind="problems", starts_from=("distill", "sft_long", "sft", "pretrain"),
        loss="grpo.grpo_loss", reasoning=True,
        about="reasoning chat model after reinforcement learning on checkable problems (GRPO, verifiable rewards)",
        # data_path "" = prompts from the reasoning curriculum; a jsonl of {"question", "answer", "kind"} otherwise.
        train=GRPOConfig(data_path="", val_path="data/eval/reasoning_eval.jsonl", epochs=1, batch_size=32,
                         learning_rate=1e-5, min_lr_ratio=1.0, weight_decay=0.0, accumulation_steps=1,
                         max_seq_len=1024, warmup_iters=10, log_step=1, eval_step=50, save_step=50),
        demo=dict(val_path="data/eval/reasoning_eval.jsonl", model="small", max_steps=40, prompts_per_step=16,
                  group_size=8, max_new_tokens=192, batch_size=32, learning_rate=5e-5, max_seq_len=384,
                  warmup_iters=2, log_step=1, eval_step=20, save_step=20, val_problems=200)),
}

# Sampling defaults of model.generate, eval_model.py, the server and the HF export's generation_config.json.
GENERATION = dict(temperature=0.7, top_p=0.85, top_k=0, max_new_tokens=512, repetition_penalty=1.0)
