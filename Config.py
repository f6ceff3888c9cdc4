"""XiaoXin configuration: the one place to edit hyperparameters.

`LLMConfig` describes a model's shape (field names follow HuggingFace's `LlamaConfig`
so export is a direct mapping). `MODELS` holds the named sizes chosen with `--model`.
`STAGES` holds each training stage's defaults; command-line flags override them
for one run, e.g. `python pretrain.py --batch_size 16 --learning_rate 3e-4`.
`DEMO` is the profile used when the real dataset is absent and the bundled demo
data under data/demo/ is trained instead (explicit flags still win).
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
    stage: str
    data_path: str
    demo_data_path: str
    init_from: str = ""                 # "" = previous stage in --save_dir (see trainer.PREVIOUS_STAGES)
    val_path: str = ""
    model: str = "default"
    save_dir: str = "out"
    log_dir: str = "log"
    plot_dir: str = "assets"
    cache_dir: str = ""                 # "" = <save_dir>/cache
    epochs: int = 1
    batch_size: int = 32
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
    num_workers: int = 0
    skip_bad_lines: bool = False
    max_bad_steps: int = 10             # stop after this many non-finite steps in a row
    tracker: str = "swanlab"            # swanlab | none
    tokenizer_dir: str = "XiaoXin_tokenizer"


STAGES = {
    "pretrain": TrainConfig(stage="pretrain", data_path="dataset/pretrain_hq.jsonl",
                            demo_data_path="data/demo/pretrain.jsonl",
                            epochs=1, batch_size=32, learning_rate=5e-4, accumulation_steps=8,
                            max_seq_len=512, warmup_iters=200),
    "sft": TrainConfig(stage="sft", data_path="dataset/sft_512.jsonl",
                       demo_data_path="data/demo/sft_512.jsonl",
                       epochs=2, batch_size=32, learning_rate=2e-4, accumulation_steps=2,
                       max_seq_len=512, warmup_iters=100),
    "sft_long": TrainConfig(stage="sft_long", data_path="dataset/sft_1024.jsonl",
                            demo_data_path="data/demo/sft_1024.jsonl",
                            epochs=1, batch_size=16, learning_rate=1e-4, accumulation_steps=4,
                            max_seq_len=1024, warmup_iters=50),
    "distill": TrainConfig(stage="distill", data_path="dataset/r1_mix_1024.jsonl",
                           demo_data_path="data/demo/r1_mix_1024.jsonl",
                           epochs=1, batch_size=16, learning_rate=1e-4, accumulation_steps=4,
                           max_seq_len=1024, warmup_iters=50),
}

# The embedded default: applied on top of a stage's defaults when its real data file
# is absent. Sized so the whole four-stage pipeline finishes in about ten minutes on
# two CPU cores and still shows falling curves and recognisable answers.
DEMO = {
    "pretrain": dict(model="small", epochs=6, batch_size=8, accumulation_steps=1, learning_rate=3e-3,
                     max_seq_len=256, warmup_iters=20, log_step=20, save_step=200),
    "sft": dict(model="small", epochs=6, batch_size=8, accumulation_steps=1, learning_rate=2e-3,
                max_seq_len=512, warmup_iters=20, log_step=20, save_step=200),
    "sft_long": dict(model="small", epochs=2, batch_size=4, accumulation_steps=1, learning_rate=1e-3,
                     max_seq_len=1024, warmup_iters=10, log_step=20, save_step=200),
    "distill": dict(model="small", epochs=4, batch_size=8, accumulation_steps=1, learning_rate=1e-3,
                    max_seq_len=1024, warmup_iters=10, log_step=20, save_step=200),
}

# Sampling defaults shared by eval_model.py, the server and the HF export's generation_config.json.
GENERATION = dict(temperature=0.7, top_p=0.85, top_k=0, max_new_tokens=512, repetition_penalty=1.0)
