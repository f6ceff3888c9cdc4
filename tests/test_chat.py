"""eval_model.py as users and scripts call it, and the download script offline."""
import json

import torch

import eval_model
from conftest import ROOT


def test_prompts_file_prints_one_json_line_per_prompt(trained, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("你好\n\n1+1等于几？\n讲个故事\n", encoding="utf-8")
    args = ["--save_dir", str(trained / "ckpt"), "--prompts_file", str(prompts), "--temperature", "0",
            "--max_new_tokens", "12"]
    assert eval_model.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    records = [json.loads(line) for line in out]        # stdout holds nothing but the JSON lines
    assert [r["prompt"] for r in records] == ["你好", "1+1等于几？", "讲个故事"]
    chat = eval_model.Chat(trained / "ckpt" / "distill.pt", ROOT / "XiaoXin_tokenizer", "cpu", "float32")
    for r in records:
        ids = chat.prompt_ids([{"role": "user", "content": r["prompt"]}], 12)
        tokens = list(chat.model.generate(torch.tensor([ids]), 12, temperature=0, eos_token_id=chat.eos))
        tokens = [t for t in tokens if t not in chat.eos]
        assert r["reply"] == chat.tok.decode(tokens)      # special tokens kept, final <|im_end|> dropped


def test_latest_stage_is_the_default_and_missing_stage_is_an_error(trained, tmp_path, capsys):
    from checkpoint import find_stage_checkpoint
    assert find_stage_checkpoint(trained / "ckpt", None).name == "distill.pt"
    assert eval_model.main(["--save_dir", str(tmp_path), "--prompt", "hi"]) == 2
    assert "holds no trained stage" in capsys.readouterr().err
    assert eval_model.main(["--save_dir", str(trained / "ckpt"), "--prompt", "hi", "--model", "default"]) == 2
    assert "different model config" in capsys.readouterr().err


def test_history_is_dropped_oldest_first(trained):
    chat = eval_model.Chat(trained / "ckpt" / "sft.pt", ROOT / "XiaoXin_tokenizer", "cpu", "float32")
    system = {"role": "system", "content": "你是小新。"}
    history = [system]
    for i in range(40):
        history += [{"role": "user", "content": f"第{i}个问题：" + "很长的内容" * 10},
                    {"role": "assistant", "content": f"第{i}个回答。" + "很长的回答" * 10}]
    history.append({"role": "user", "content": "最后的问题"})
    ids = chat.prompt_ids(history, max_new_tokens=200)
    text = chat.tok.decode(ids)
    assert len(ids) <= chat.max_len - 200
    assert text.startswith("<|im_start|>system\n你是小新。") and "最后的问题" in text
    assert "第39个回答" in text and "第0个问题" not in text


def test_download_fails_offline_with_one_sentence(tmp_path, monkeypatch, capsys):
    import runpy
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")     # a closed loopback port: no network used
    module = runpy.run_path(str(ROOT / "scripts" / "download_data.py"))
    assert module["main"](["--dest", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: could not reach http://127.0.0.1:9") and len(err.splitlines()) == 1


def test_reasoning_accuracy_tool_scores_with_the_generator_checker(trained, tmp_path, capsys):
    import runpy
    from grader import check_answer
    from scripts.gen_reasoning import generate
    problem = generate(1, seed=5)[0]
    assert check_answer(problem["kind"], problem["expected"], f"<think>\n…\n</think>\n<answer>\n{problem['answer']}\n</answer>")
    module = runpy.run_path(str(ROOT / "scripts" / "eval_reasoning.py"))
    out = tmp_path / "r.json"
    assert module["main"](["--save_dir", str(trained / "ckpt"), "--limit", "3", "--max_new_tokens", "8",
                           "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 3 and 0 <= result["accuracy"] <= 1 and len(result["results"]) == 3


def test_compile_flag_picks_the_decode_mode(trained):
    """--compile auto leaves CPU chat eager (compiling costs more than a short chat gains);
    on compiles the decode step (its tokens are tested in test_model.py)."""
    load = lambda mode: eval_model.Chat(trained / "ckpt" / "sft.pt", ROOT / "XiaoXin_tokenizer", "cpu",
                                        "float32", compile=mode).model.decode_mode
    assert [load("auto"), load("off"), load("on")] == ["dynamic", "dynamic", "compiled"]
    assert eval_model.main(["--save_dir", str(trained / "ckpt"), "--prompt", "hi", "--compile", "maybe"]) == 2
